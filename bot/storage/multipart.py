"""What a multipart upload is made of, the same for R2 and the local folder."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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


class PartBody:
    """One part of the spool file as a readable, seekable stream of exactly ``length``
    bytes from ``offset``: what the store sends, in chunks.

    A part (8 MiB by default) is never held whole in memory: read whole, the first parts
    of a recording each raised its resident memory for good (+20 MiB over ten minutes of
    tracks mode, ``BENCHMARKS.md``; most likely glibc keeping freed blocks that large on
    the uploader thread's heap). Position 0 is the part's first byte, as botocore expects when it
    rewinds the body to hash it (SigV4) or to retry.
    """

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._file = path.open("rb")
        if os.fstat(self._file.fileno()).st_size < offset + length:
            self._file.close()
            raise OSError(0, "spool shrank while uploading")
        self._offset = offset
        self.length = length
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        left = self.length - self._position
        if size < 0 or size > left:
            size = left
        self._file.seek(self._offset + self._position)
        data = self._file.read(size)
        self._position += len(data)
        return data

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.length}[whence]
        self._position = min(max(0, base + position), self.length)
        return self._position

    def tell(self) -> int:
        return self._position

    def chunks(self) -> Iterator[bytes]:
        """The part from its start, ``READ_CHUNK`` at a time; rewound after, because
        botocore sends (and hashes) a body from where it finds it."""
        self.seek(0)
        try:
            while chunk := self.read(READ_CHUNK):
                yield chunk
        finally:
            self.seek(0)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PartBody:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
