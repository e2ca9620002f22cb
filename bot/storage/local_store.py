"""A folder that behaves like the object store, for a clinic without R2 and for tests.

The same multipart calls as ``S3Store`` (parts under ``.uploads/<id>/``, joined on
complete), so the uploader, journal and verification run the one code path; what it
writes is owner-only (0600), like everything else the recorder writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import StorageSettings
from bot.storage.errors import StorageError
from bot.storage.journal import write_atomic
from bot.storage.multipart import READ_CHUNK, PartBody, PartInfo, PendingUpload


class LocalStore:
    """Multipart semantics on a folder: parts under ``.uploads/<id>/``, joined on complete."""

    backend = "local"
    encrypted = False
    loopback = True

    def __init__(self, settings: StorageSettings) -> None:
        self.root = settings.local_dir

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def _upload_dir(self, upload_id: str) -> Path:
        return self.root / ".uploads" / upload_id

    def _missing(self, upload_id: str) -> StorageError:
        return StorageError(
            f"multipart upload {upload_id} gone from {self.root}", kind="no_upload", permanent=True
        )

    def preflight(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create storage.local_dir {self.root}: {exc.strerror}",
                kind="bucket",
                permanent=True,
            ) from None

    def create_upload(self, key: str, recording_id: str) -> str:
        upload_id = uuid.uuid4().hex
        directory = self._upload_dir(upload_id)
        directory.mkdir(parents=True)
        write_atomic(directory / "key", key.encode("utf-8"))
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, body: PartBody, md5: bytes) -> str:
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            raise self._missing(upload_id)
        received = hashlib.md5()
        path = directory / f"{number:05d}"
        write_atomic(path, _hashed(body.chunks(), received))
        if received.digest() != md5:  # as S3 answers BadDigest to a wrong Content-MD5
            path.unlink()
            raise StorageError(
                f"part {number} changed between hashing and storing",
                kind="integrity",
                permanent=False,
            )
        return md5.hex()

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            raise self._missing(upload_id)
        parts = []
        for path in sorted(directory.glob("[0-9]" * 5)):
            data = path.read_bytes()
            parts.append(PartInfo(int(path.name), len(data), hashlib.md5(data).hexdigest()))
        return parts

    def probe(self, key: str, upload_id: str) -> None:
        if not self._upload_dir(upload_id).is_dir():
            raise self._missing(upload_id)

    def complete(self, key: str, upload_id: str, parts: list[PartInfo]) -> None:
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            raise self._missing(upload_id)
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        # A recording is patient data: owner-only, like its parts, manifest and audit
        # trail; fchmod also covers a temp file left by a crash with other modes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o600)
            for part in parts:
                with (directory / f"{part.number:05d}").open("rb") as src:
                    shutil.copyfileobj(src, out, READ_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        shutil.rmtree(directory)

    def head(self, key: str) -> tuple[int, str | None] | None:
        try:
            return (self.root / key).stat().st_size, None
        except FileNotFoundError:
            return None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with (self.root / key).open("rb") as src:
            src.seek(start)
            return src.read(end - start)

    def iter_object(self, key: str) -> Iterator[bytes]:
        with (self.root / key).open("rb") as src:
            while chunk := src.read(READ_CHUNK):
                yield chunk

    def put_small(self, key: str, data: bytes, content_type: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)

    def list_uploads(self, prefix: str) -> list[PendingUpload]:
        found = []
        for directory in (self.root / ".uploads").glob("*"):
            key = (directory / "key").read_text(encoding="utf-8")
            if key.startswith(prefix):
                mtime = datetime.fromtimestamp(directory.stat().st_mtime, UTC)
                found.append(PendingUpload(key, directory.name, mtime))
        return found

    def list_keys(self, prefix: str) -> list[str]:
        """Every stored key under ``prefix``, sorted (uploads in progress are not keys)."""
        base, _, _ = prefix.rpartition("/")
        folder = self.root / base
        if not folder.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.startswith(".uploads/"))

    def abort(self, key: str, upload_id: str) -> None:
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)


def _hashed(chunks: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
