"""Opening the multipart upload behind a spool, or picking it up where it stopped.

A fresh recording needs a new upload; a spool left by a crash (``bot recover``), an
uploader that restarts, or a store that lost the upload need the old one continued or
replaced. The journal says which parts we believe were stored, but the store's ListParts
is the authority, and a listed part is kept only if its bytes match the spool. An upload
the store no longer knows was either completed just before a crash (the object is there,
at the spool's size: adopt it) or expired (start a new one). One path for all of them, so
a resumed upload is held to the same rules as one that never stopped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from bot.storage.errors import StorageError
from bot.storage.journal import Journal, PartRecord
from bot.storage.multipart import PartInfo
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore

_READ_CHUNK = 8 * 1024 * 1024


def open_or_resume(
    store: ObjectStore, spool: Spool, journal: Journal, log: FilteringBoundLogger
) -> Journal:
    """The journal to continue from: a new upload, or the parts the store and spool agree on.

    Returns a new journal instead of changing ``journal``, so the caller decides when its
    readers see it; saving it is the caller's too.
    """
    store.preflight()
    key = spool.info.object_key
    if journal.upload_id is None:
        upload_id = store.create_upload(key, spool.info.recording_id)
        return journal.model_copy(update={"upload_id": upload_id, "parts": []})
    if journal.completed:
        return journal
    try:
        listed = store.list_parts(key, journal.upload_id)
    except StorageError as exc:
        if exc.kind != "no_upload":
            raise
        return _adopt_or_restart(store, spool, journal, log)
    kept = _parts_to_keep(store, spool, journal, latest_per_number(listed))
    log.info("storage_upload_resumed", parts=len(kept), listed=len(listed))
    return journal.model_copy(update={"parts": kept})


class ContentHashes:
    """The object's SHA-256 (the manifest's) and SHA-1 (what FHIR's ``Attachment.hash``
    is), both taken in the one pass that reads the spool for upload."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1(usedforsecurity=False)

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        self._sha1.update(data)

    def copy(self) -> ContentHashes:
        """These hashes to go on from, leaving this one as it is (a part not yet stored)."""
        twin = ContentHashes()
        twin._sha256, twin._sha1 = self._sha256.copy(), self._sha1.copy()
        return twin

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    @classmethod
    def of_prefix(cls, path: Path, size: int) -> ContentHashes:
        """The hashes of a file's first ``size`` bytes, ready to take the bytes after."""
        hashes = cls()
        with path.open("rb") as src:
            remaining = size
            while remaining > 0:
                chunk = src.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    raise OSError(0, "spool shorter than the uploaded parts")
                hashes.update(chunk)
                remaining -= len(chunk)
        return hashes


def latest_per_number(listed: list[PartInfo]) -> list[PartInfo]:
    """One entry per part number, the last listed, in order.

    Uploading a part number again replaces it (S3 semantics), but a store may still list
    the replaced upload (SeaweedFS does after a part upload cut short by a crash and redone
    by ``bot recover``); completion uses the latest, so the checks do too.
    """
    latest = {part.number: part for part in listed}
    return [latest[number] for number in sorted(latest)]


def _adopt_or_restart(
    store: ObjectStore, spool: Spool, journal: Journal, log: FilteringBoundLogger
) -> Journal:
    """The upload is gone: completed before a crash (adopt it) or expired (start over)."""
    size = spool.media_size()
    head = store.head(spool.info.object_key)
    if head is not None and head[0] == size:
        parts = []
        with spool.media_path.open("rb") as src:
            for number, offset in enumerate(range(0, max(size, 1), journal.part_size), 1):
                data = src.read(min(journal.part_size, size - offset))
                md5 = hashlib.md5(data).hexdigest()
                parts.append(PartRecord(number=number, size=len(data), etag=md5, md5=md5))
        log.info("storage_upload_adopted", size=size)
        return journal.model_copy(update={"parts": parts, "completed": True})
    log.warning("storage_upload_restarted", reason="upload no longer exists")
    upload_id = store.create_upload(spool.info.object_key, spool.info.recording_id)
    return journal.model_copy(update={"upload_id": upload_id, "parts": []})


def _parts_to_keep(
    store: ObjectStore, spool: Spool, journal: Journal, listed: list[PartInfo]
) -> list[PartRecord]:
    """The leading run of full listed parts whose bytes match the spool; the rest is redone."""
    part_size = journal.part_size
    journaled = {p.number: p for p in journal.parts}
    kept: list[PartRecord] = []
    size = spool.media_size()
    with spool.media_path.open("rb") as src:
        for part in listed:
            offset = (part.number - 1) * part_size
            if part.number != len(kept) + 1 or part.size != part_size or offset + part.size > size:
                break
            src.seek(offset)
            md5 = hashlib.md5(src.read(part.size)).hexdigest()
            if store.encrypted:
                # Under SSE-C an ETag need not be the MD5: trust only what we journaled.
                ours = journaled.get(part.number)
                matches = ours is not None and ours.etag == part.etag and ours.md5 == md5
            else:
                matches = part.etag == md5
            if not matches:
                break
            kept.append(PartRecord(number=part.number, size=part.size, etag=part.etag, md5=md5))
    return kept
