"""The two places a recording can go, behind one multipart interface.

``S3Store`` (``s3_store``) speaks to R2 (or SeaweedFS) with the client settings R2 needs;
``LocalStore`` imitates the same multipart calls on a folder. The uploader, the journal
and the verification therefore run one code path whatever the backend. boto3 is imported
only when the S3 backend is opened: it costs a tenth of the recorder's memory (10 MB, 15
with a client) that a recorder writing to a local folder would carry for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from bot.config import StorageSettings
from bot.storage.local_store import LocalStore
from bot.storage.multipart import PartBody, PartInfo, PendingUpload

if TYPE_CHECKING:
    from bot.storage.s3_store import S3Store

__all__ = ["LocalStore", "ObjectStore", "open_store"]


class ObjectStore(Protocol):
    backend: str
    encrypted: bool
    loopback: bool

    def describe(self, key: str) -> str: ...
    def preflight(self) -> None: ...
    def create_upload(self, key: str, recording_id: str) -> str: ...
    def upload_part(
        self, key: str, upload_id: str, number: int, body: PartBody, md5: bytes
    ) -> str: ...
    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]: ...
    def probe(self, key: str, upload_id: str) -> None:
        """One cheap request proving the store answers, takes the credentials and still
        holds the upload: how an outage is seen while no part is due."""

    def complete(self, key: str, upload_id: str, parts: list[PartInfo]) -> None: ...
    def head(self, key: str) -> tuple[int, str | None] | None: ...
    def read_range(self, key: str, start: int, end: int) -> bytes: ...
    def iter_object(self, key: str) -> Iterator[bytes]: ...
    def put_small(self, key: str, data: bytes, content_type: str) -> None: ...
    def list_uploads(self, prefix: str) -> list[PendingUpload]: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def abort(self, key: str, upload_id: str) -> None: ...


def open_store(settings: StorageSettings) -> S3Store | LocalStore:
    if settings.backend != "s3":
        return LocalStore(settings)
    from bot.storage.s3_store import S3Store

    return S3Store(settings)
