"""Storage failures as one clear line each: what failed, where, and what to do.

``permanent`` separates failures that retrying cannot fix (wrong credentials, a missing
bucket) from outages that backoff rides out, so the uploader knows whether to keep
trying after the recording ends.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["credentials", "bucket", "unreachable", "no_upload", "integrity", "store"]


class StorageError(Exception):
    def __init__(self, message: str, *, kind: Kind, permanent: bool) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.permanent = permanent
