"""Errors of the Cloudflare Realtime API as exceptions that say what to do next.

Messages carry the HTTP status, ``errorCode`` and ``errorDescription`` and the operation,
never the app secret or a request body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.realtime.models import TrackResult

RETRYABLE_CODES = frozenset(
    {
        "retryable_transient_error",
        "temporarily_unavailable_error",
        "transport_unavailable_error",
        "backend_error",
        "internal_error",
    }
)


class RealtimeError(Exception):
    """Any failure talking to the Realtime API."""

    def __init__(
        self,
        operation: str,
        status: int | None,
        error_code: str | None = None,
        error_description: str | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.error_code = error_code
        self.error_description = error_description
        parts = [operation, "failed"]
        if status is not None:
            parts.append(f"with HTTP {status}")
        if error_code:
            parts.append(f"[{error_code}]")
        if error_description:
            parts.append(f"{error_description}")
        super().__init__(" ".join(parts) + self.advice())

    def advice(self) -> str:
        return ""


class AuthenticationError(RealtimeError):
    def advice(self) -> str:
        return ": check realtime.app_id and realtime.app_secret (BOT_REALTIME_APP_SECRET)"


class AppNotFoundError(RealtimeError):
    def advice(self) -> str:
        return ": check realtime.app_id and realtime.base_url"


class InvalidRequestError(RealtimeError):
    """400/406: the request itself is wrong; retrying it unchanged cannot help."""


class SessionNotReadyError(RealtimeError):
    """425: the session's transport is not connected yet."""


class SessionGoneError(RealtimeError):
    """410: the session expired or was closed; a new session is needed."""


class TransientError(RealtimeError):
    """429, 5xx, a transient error code or a network failure; retried with backoff."""


class TrackError(RealtimeError):
    """One or more tracks failed inside an otherwise successful (HTTP 200) call."""

    def __init__(self, operation: str, failures: Sequence[TrackResult]) -> None:
        self.failures = list(failures)
        detail = "; ".join(
            f"{f.sessionId or '?'}/{f.trackName or f.mid or '?'}: "
            f"[{f.errorCode}] {f.errorDescription or ''}".rstrip()
            for f in self.failures
        )
        super().__init__(operation, 200, "track_errors", detail)


class OfferRefusedError(RealtimeError):
    """The SFU's offer could not be applied even with every new m-line declined.

    Names only aiortc's exception types: the SDP itself may quote the app's track names.
    """

    def __init__(self, first_error: str, last_error: str) -> None:
        super().__init__(
            "answer the SFU's offer",
            None,
            "offer_refused",
            f"the WebRTC stack refused the offer ({first_error}, then {last_error} with "
            "every new track declined)",
        )

    def advice(self) -> str:
        return (
            ": the session is left with an unanswered offer; run with logging.level=debug "
            "and report the offer's shape (not its track names)"
        )


def error_for(
    operation: str, status: int | None, code: str | None, description: str | None
) -> RealtimeError:
    """Choose the exception class for a failed call from its status and error code."""
    if status == 429 or (status is not None and status >= 500) or code in RETRYABLE_CODES:
        return TransientError(operation, status, code, description)
    if status == 401 or code == "unauthorized":
        return AuthenticationError(operation, status, code, description)
    if status == 404:
        return AppNotFoundError(operation, status, code, description)
    if status == 410:
        return SessionGoneError(operation, status, code, description)
    if status == 425:
        return SessionNotReadyError(operation, status, code, description)
    if status is None:
        return TransientError(operation, status, code, description)
    return InvalidRequestError(operation, status, code, description)
