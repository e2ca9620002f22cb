"""Spool, streaming upload, verification and recovery of recordings.

The recorder creates a ``Spool``, writes its fragmented MP4 to ``spool.media_path``,
starts the ``Uploader`` from ``open_uploader`` and pokes it after each fragment; at the
end it calls ``finish`` (blocking, from a thread). ``bot recover`` finishes what a crash
left behind (``bot.recording.recovery``, with ``bot.storage.recover``).

The spool owns the local copy and its disk caps; the uploader streams it while the
recording runs (``uploader``), opening or resuming the upload through ``resume`` and
completing it through ``finalize``, which proves the object with ``verify`` before the
spool may go; ``stores`` hides whether that object is in R2 or a local folder.
It may import the foundation (``bot.config``, ``bot.logs``, ...) and ``bot.manifest``,
nothing else of the product: the recorder uses storage, never the other way round.
"""

from __future__ import annotations

from pathlib import Path

from bot.config import StorageSettings
from bot.storage.errors import StorageError
from bot.storage.finalize import Seal, Sealed, Sidecar, UploadResult
from bot.storage.keys import audit_key, fhir_key, manifest_key, object_key_for, signature_key
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore, open_store
from bot.storage.uploader import Uploader, UploadStatus

__all__ = [
    "ObjectStore",
    "Seal",
    "Sealed",
    "Sidecar",
    "Spool",
    "StorageError",
    "UploadResult",
    "UploadStatus",
    "Uploader",
    "audit_key",
    "fhir_key",
    "local_path",
    "manifest_key",
    "object_key_for",
    "open_uploader",
    "presigned_url",
    "signature_key",
]


def open_uploader(
    settings: StorageSettings, spool: Spool, store: ObjectStore | None = None
) -> Uploader:
    """An uploader of ``spool`` into ``store`` (default: the one ``settings.backend`` names,
    "s3" or "local"); nothing runs until ``start``."""
    return Uploader(settings, spool, store or open_store(settings))


def local_path(settings: StorageSettings, object_key: str) -> Path | None:
    """Where the local backend put a verified object (None for object storage)."""
    return settings.local_dir / object_key if settings.backend == "local" else None


def presigned_url(settings: StorageSettings, object_key: str) -> str | None:
    """A GET URL valid for ``presign_seconds`` (None for the local backend).

    With SSE-C the URL alone is not enough: the reader must send the key headers too.
    """
    if settings.backend != "s3":
        return None
    from bot.storage.s3_store import S3Store

    return S3Store(settings).presign_get(object_key, settings.presign_seconds)
