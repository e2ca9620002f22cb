"""Completing the multipart upload and proving the object, before the spool may go.

The spool is the only copy until the stored object is proven to be it, so everything
that must hold before deleting it is decided here, in order: every spooled byte was
uploaded, ListParts agrees with the journal and R2's equal-part rule (R2 would only
refuse at completion), the completed object verifies (``verify``), and its manifest,
carrying the storage record, is stored beside it. Any failure raises ``StorageError`` and
leaves the spool and journal for ``bot recover``; whether to retry is the uploader's call.

The manifest is sealed last, by the caller's ``seal`` (``bot.custody``): it adds what
only the caller knows (the chain heads, the signature) and the files that go beside the
object (audit trail, signature, FHIR resource). Those are stored first and the manifest
after them, so a manifest in the store always has its evidence beside it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from structlog.typing import FilteringBoundLogger

from bot.manifest import Manifest, PartEntry, StorageRecord, Verification
from bot.storage.errors import StorageError
from bot.storage.journal import Journal
from bot.storage.keys import manifest_key
from bot.storage.multipart import PartInfo
from bot.storage.resume import ContentHashes, latest_per_number
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore
from bot.storage.verify import multipart_etag, verify_object

VerifyRead = Literal["auto", "full", "ends"]


@dataclass(frozen=True)
class Sidecar:
    """A small object stored next to the recording (its key says which)."""

    key: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Sealed:
    """The final manifest, the exact bytes to store (what a signature covers), and the
    files that go beside it."""

    manifest: Manifest
    body: bytes
    sidecars: tuple[Sidecar, ...] = ()


Seal = Callable[[Manifest], Sealed]
"""Called once the object is verified, with the manifest that carries the storage record.
May be called again if storing the manifest fails and is retried."""


def unsealed(manifest: Manifest) -> Sealed:
    """No evidence beyond the manifest itself (tests of the storage layer alone)."""
    return Sealed(manifest, manifest.to_json())


@dataclass(frozen=True)
class UploadResult:
    object_key: str
    location: str
    manifest_key: str
    size: int
    sha256: str
    parts: int
    sidecars: tuple[str, ...]
    """Keys of what was stored beside the object, before its manifest."""
    seconds_to_verified: float
    """From ``finish`` being called to the verified object and its manifest."""
    manifest: Manifest


def finalize(
    store: ObjectStore,
    spool: Spool,
    journal: Journal,
    *,
    hashes: ContentHashes,
    manifest: Manifest,
    seal: Seal,
    verify_read: VerifyRead,
    began: float,
    log: FilteringBoundLogger,
) -> UploadResult:
    """Complete, verify, seal and store the manifest, delete the spool (``began``: when
    finish began). ``hashes`` are of the bytes uploaded, taken while they were read."""
    key = spool.info.object_key
    sha256 = hashes.sha256
    size = spool.media_size()
    _complete(store, spool, journal, size, log)
    # Under SSE-C the ETags are not MD5s, so only a full read can prove the bytes.
    full_read = (
        verify_read == "full" or (verify_read == "auto" and store.loopback) or store.encrypted
    )
    verification = verify_object(
        store,
        key,
        media_path=spool.media_path,
        size=size,
        sha256=sha256,
        parts=journal.parts,
        full_read=full_read,
        keyframe_pieces=spool.composite,
    )
    record = _storage_record(
        store, journal, key=key, size=size, hashes=hashes, verification=verification
    )
    final = manifest.model_copy(update={"storage": record})
    if final.ended_at is None:
        final = final.model_copy(update={"ended_at": datetime.now(UTC)})
    sealed = _store_sealed(store, seal(final), key)
    spool.delete()
    seconds = time.monotonic() - began
    log.info(
        "storage_verified",
        object_key=key,
        size=size,
        parts=len(journal.parts),
        sha256_method=verification.sha256_method,
        seconds_to_verified=round(seconds, 3),
    )
    return UploadResult(
        object_key=key,
        location=store.describe(key),
        manifest_key=manifest_key(key),
        size=size,
        sha256=sha256,
        parts=len(journal.parts),
        sidecars=tuple(sidecar.key for sidecar in sealed.sidecars),
        seconds_to_verified=seconds,
        manifest=sealed.manifest,
    )


def store_record(store: ObjectStore, sealed: Sealed, key: str, *, began: float) -> UploadResult:
    """Store a record that has no media object of its own (a recording kept only as
    tracks, each already verified): its evidence, then its manifest, read back to prove
    it. The manifest is then the record's object."""
    _store_sealed(store, sealed, key)
    stored = manifest_key(key)
    if store.read_range(stored, 0, len(sealed.body)) != sealed.body:
        raise StorageError(
            f"{store.describe(stored)} differs from the manifest written",
            kind="integrity",
            permanent=False,
        )
    return UploadResult(
        object_key=stored,
        location=store.describe(stored),
        manifest_key=stored,
        size=len(sealed.body),
        sha256=hashlib.sha256(sealed.body).hexdigest(),
        parts=0,
        sidecars=tuple(sidecar.key for sidecar in sealed.sidecars),
        seconds_to_verified=time.monotonic() - began,
        manifest=sealed.manifest,
    )


def _store_sealed(store: ObjectStore, sealed: Sealed, key: str) -> Sealed:
    """The evidence first, the manifest last: a stored manifest has its evidence beside it."""
    for sidecar in sealed.sidecars:
        store.put_small(sidecar.key, sidecar.body, sidecar.content_type)
    store.put_small(manifest_key(key), sealed.body, "application/json")
    return sealed


def _complete(
    store: ObjectStore, spool: Spool, journal: Journal, size: int, log: FilteringBoundLogger
) -> None:
    """Complete the upload once the spool, the journal and ListParts all agree."""
    if journal.uploaded_bytes != size:
        raise StorageError(
            f"spool has {size} bytes but {journal.uploaded_bytes} were uploaded",
            kind="integrity",
            permanent=True,
        )
    if journal.completed:
        return
    assert journal.upload_id is not None
    key = spool.info.object_key
    _check_parts(journal, latest_per_number(store.list_parts(key, journal.upload_id)))
    parts = [PartInfo(p.number, p.size, p.etag) for p in journal.parts]
    log.info("storage_completing", parts=len(parts), size=size)
    store.complete(key, journal.upload_id, parts)
    journal.completed = True
    journal.save(spool.journal_path)


def _check_parts(journal: Journal, listed: list[PartInfo]) -> None:
    """R2 rejects unequal parts only at completion: check everything before asking it."""
    expected = [(p.number, p.size, p.etag) for p in journal.parts]
    actual = [(p.number, p.size, p.etag) for p in listed]
    problem = None
    if actual != expected:
        problem = f"store lists parts {actual[:3]}... but the journal has {expected[:3]}..."
    elif any(p.size != journal.part_size for p in listed[:-1]):
        problem = "a non-final part differs from part_size"
    if problem is not None:
        raise StorageError(f"ListParts check failed: {problem}", kind="integrity", permanent=True)


def _storage_record(
    store: ObjectStore,
    journal: Journal,
    *,
    key: str,
    size: int,
    hashes: ContentHashes,
    verification: Verification,
) -> StorageRecord:
    """What the manifest says about where the object is and how it was proven."""
    bucket = getattr(store, "bucket", None)
    return StorageRecord(
        backend="s3" if store.backend == "s3" else "local",
        bucket=bucket if isinstance(bucket, str) else None,
        object_key=key,
        size=size,
        sha256=hashes.sha256,
        sha1=hashes.sha1,
        etag=None if store.encrypted else multipart_etag(journal.parts),
        part_size=journal.part_size,
        parts=tuple(PartEntry(number=p.number, size=p.size, etag=p.etag) for p in journal.parts),
        encryption="sse-c" if store.encrypted else "none",
        verification=verification,
    )
