"""The SFU's top-level API errors: an HTTP status plus Cloudflare's ``errorCode``."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"HTTP {status} [{code}] {description}")
        self.status = status
        self.code = code
        self.description = description


def decoding_error(description: str) -> ApiError:
    return ApiError(400, "decoding_error", description)


def invalid_params(description: str) -> ApiError:
    return ApiError(406, "invalid_params", description)


def invalid_session_description(description: str) -> ApiError:
    return ApiError(400, "invalid_session_description", description)


def session_gone(description: str = "session expired or closed; create a new one") -> ApiError:
    return ApiError(410, "session_error", description)


def session_not_ready() -> ApiError:
    return ApiError(
        425, "session_error", "session transport not connected within 5 s; finish setup and retry"
    )
