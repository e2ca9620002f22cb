"""What a multipart upload is made of, the same for R2 and the local folder."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

READ_CHUNK: Final = 1024 * 1024
"""Bytes per read when an object is streamed or copied."""


@dataclass(frozen=True)
class PartInfo:
    number: int
    size: int
    etag: str
    """Without quotes; the hex MD5 of the part on S3 without SSE-C, and on the local store."""


@dataclass(frozen=True)
class PendingUpload:
    key: str
    upload_id: str
    initiated: datetime
