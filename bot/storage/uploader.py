"""Streaming multipart upload of a growing spool, from a worker thread.

The recorder appends fragments to the spool and pokes; the worker uploads every full
``part_size`` slice as soon as it exists, hashing as it goes, and journals after each
part. When the store is down it raises an alarm, keeps its place and backs off while the
recording keeps growing on disk; it catches up when the store returns. ``finish`` uploads
the tail, checks the parts with ListParts, completes, verifies and only then deletes the
spool, so no byte is lost to a failure anywhere on the way.
"""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from bot.config import StorageSettings
from bot.manifest import Manifest, PartEntry, StorageRecord
from bot.storage.errors import StorageError
from bot.storage.journal import Journal, PartRecord
from bot.storage.keys import manifest_key
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore, PartInfo
from bot.storage.verify import multipart_etag, verify_object

log = structlog.get_logger("bot.storage")

_POLL_SECONDS = 1.0
"""Tail the spool at least this often even without pokes (a writer may forget to poke)."""
_FIRST_BACKOFF = 0.5
_READ_CHUNK = 8 * 1024 * 1024

State = Literal["idle", "uploading", "finishing", "done", "failed"]


@dataclass(frozen=True)
class UploadStatus:
    state: State
    bytes_spooled: int
    bytes_uploaded: int
    parts: int
    lag_bytes: int
    lag_seconds: float
    """How long full parts have waited for the store (0 while it keeps up)."""
    alarm: bool
    """The store is failing right now; the recording continues to the spool."""
    alarms: int
    """Outages since start: a counter for metrics."""
    errors: int
    last_error: str | None
    free_bytes: int
    """Free space on the spool's file system."""
    disk_limit: str | None = None
    """Why the spool may not grow any more ("max_spool_bytes" or "min_free_bytes"), or
    None. Once set it stays set: the recorder should stop, and the file so far is kept."""


@dataclass(frozen=True)
class UploadResult:
    object_key: str
    location: str
    manifest_key: str
    size: int
    sha256: str
    parts: int
    seconds_to_verified: float
    """From ``finish`` being called to the verified object and its manifest."""
    manifest: Manifest


class Uploader:
    """Uploads one spool; ``start``/``poke``/``status`` never block, ``finish`` does."""

    def __init__(self, settings: StorageSettings, spool: Spool, store: ObjectStore) -> None:
        self._settings = settings
        self._spool = spool
        self._store = store
        self._key = spool.info.object_key
        journal = spool.journal()
        if journal is None:
            journal = Journal(
                backend=store.backend, object_key=self._key, part_size=settings.part_size
            )
        # A resumed upload keeps the part size it started with: R2 wants them all equal.
        self._part_size = journal.part_size
        self._journal = journal
        self._sha = hashlib.sha256()
        self._synced = False
        self._cond = threading.Condition()
        self._finishing = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_error: StorageError | None = None
        self._state: State = "idle"
        self._alarm = False
        self._alarms = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_progress = time.monotonic()
        self._disk_limit: str | None = None
        self._log = log.bind(recording_id=spool.info.recording_id, backend=store.backend)

    # -- the recorder's side ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if not self._spool.try_lock():
            raise StorageError(
                f"spool {self._spool.directory} is in use by another process",
                kind="store",
                permanent=True,
            )
        self._state = "uploading"
        self._thread = threading.Thread(
            target=self._run, name=f"upload-{self._spool.info.recording_id}", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        with self._cond:
            self._cond.notify()

    def status(self) -> UploadStatus:
        """A snapshot for the recorder's watch loop and metrics; also checks the disk caps."""
        spooled = self._spool.media_size()
        free = self._spool.free_bytes()
        self._check_disk(spooled, free)
        with self._cond:
            uploaded = self._journal.uploaded_bytes
            lag = max(0, spooled - uploaded)
            waiting = lag >= self._part_size
            return UploadStatus(
                state=self._state,
                bytes_spooled=spooled,
                bytes_uploaded=uploaded,
                parts=len(self._journal.parts),
                lag_bytes=lag,
                lag_seconds=time.monotonic() - self._last_progress if waiting else 0.0,
                alarm=self._alarm,
                alarms=self._alarms,
                errors=self._errors,
                last_error=self._last_error,
                free_bytes=free,
                disk_limit=self._disk_limit,
            )

    def _check_disk(self, spooled: int, free: int) -> None:
        settings = self._settings
        if spooled >= settings.max_spool_bytes:
            reason = "max_spool_bytes"
        elif free < settings.min_free_bytes:
            reason = "min_free_bytes"
        else:
            return
        with self._cond:
            if self._disk_limit is not None:
                return
            self._disk_limit = reason
        self._log.error(
            "storage_disk_limit",
            limit=reason,
            bytes_spooled=spooled,
            free_bytes=free,
            max_spool_bytes=settings.max_spool_bytes,
            min_free_bytes=settings.min_free_bytes,
        )

    def finish(self, manifest: Manifest) -> UploadResult:
        """Upload the tail, complete, verify, write the manifest, delete the spool.

        Blocking: call it from a thread (``asyncio.to_thread``). On failure it raises
        ``StorageError`` and leaves the spool and journal for ``bot recover``.
        """
        began = time.monotonic()
        if manifest.recording_id != self._spool.info.recording_id:
            raise ValueError("manifest belongs to another recording")
        self.start()
        with self._cond:
            self._finishing = True
            self._state = "finishing"
            self._cond.notify()
        assert self._thread is not None
        self._thread.join()
        if self._stopped.is_set():
            raise StorageError("upload was abandoned", kind="store", permanent=True)
        if self._worker_error is not None:
            self._state = "failed"
            self._spool.unlock()  # let `bot recover` (even in this process) take it over
            raise self._worker_error
        deadline = began + self._settings.finish_timeout
        backoff = _FIRST_BACKOFF
        while True:
            try:
                result = self._finalize(manifest, began)
            except StorageError as exc:
                self._raise_alarm(exc)
                if exc.permanent or time.monotonic() + backoff > deadline:
                    self._state = "failed"
                    self._spool.unlock()
                    self._log.error(
                        "storage_finish_failed",
                        kind=exc.kind,
                        error=str(exc),
                        spool=str(self._spool.directory),
                    )
                    raise
                time.sleep(backoff)  # this is the caller's worker thread, never the event loop
                backoff = min(backoff * 2, self._settings.retry_backoff_max)
                continue
            self._state = "done"
            return result

    def abandon(self) -> None:
        """Stop uploading without completing (the recorder failed): the spool stays for
        ``bot recover``, which resumes from the journal and ListParts."""
        self._stopped.set()
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        self._state = "failed"
        self._spool.unlock()

    # -- the worker ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        deadline: float | None = None
        while not self._stopped.is_set():
            with self._cond:
                finishing = self._finishing
            if finishing and deadline is None:
                deadline = time.monotonic() + self._settings.finish_timeout
            try:
                self._upload_available(final=finishing)
            except StorageError as exc:
                self._raise_alarm(exc)
                gone = exc.kind == "no_upload"
                if gone:
                    self._synced = False  # the store lost the upload: resync starts a new one
                if finishing and (
                    (exc.permanent and not gone)
                    or deadline is None
                    or time.monotonic() + backoff > deadline
                ):
                    self._worker_error = exc
                    return
                with self._cond:
                    # Back off, but start the final push at once when the recording ends.
                    self._cond.wait_for(
                        functools.partial(self._wake_early, finishing),
                        timeout=backoff * random.uniform(0.8, 1.2),
                    )
                backoff = min(backoff * 2, self._settings.retry_backoff_max)
                continue
            except OSError as exc:
                self._worker_error = StorageError(
                    f"cannot read the spool {self._spool.media_path}: {exc.strerror}",
                    kind="store",
                    permanent=True,
                )
                return
            backoff = _FIRST_BACKOFF
            self._clear_alarm()
            if finishing:
                return
            with self._cond:
                if not (self._finishing or self._stopped.is_set() or self._full_part_waiting()):
                    self._cond.wait(_POLL_SECONDS)

    def _wake_early(self, was_finishing: bool) -> bool:
        return self._stopped.is_set() or (self._finishing and not was_finishing)

    def _full_part_waiting(self) -> bool:
        return self._spool.media_size() - self._journal.uploaded_bytes >= self._part_size

    def _upload_available(self, *, final: bool) -> None:
        if not self._synced:
            self._sync()
        if self._journal.completed:
            return
        size = self._spool.media_size()
        while True:
            offset = self._journal.uploaded_bytes
            remaining = size - offset
            if remaining >= self._part_size:
                self._upload_part(offset, self._part_size)
            elif final and (remaining > 0 or not self._journal.parts):
                self._upload_part(offset, remaining)
            else:
                return

    def _upload_part(self, offset: int, length: int) -> None:
        with self._spool.media_path.open("rb") as src:
            src.seek(offset)
            data = src.read(length)
        if len(data) != length:
            raise OSError(0, "spool shrank while uploading")
        md5 = hashlib.md5(data).digest()
        number = len(self._journal.parts) + 1
        upload_id = self._journal.upload_id
        assert upload_id is not None
        self._log.debug("storage_part_uploading", part=number, size=length)
        etag = self._store.upload_part(self._key, upload_id, number, data, md5)
        if not self._store.encrypted and etag != md5.hex():
            raise StorageError(
                f"store returned ETag {etag} for part {number}, expected its MD5",
                kind="integrity",
                permanent=False,
            )
        self._sha.update(data)
        record = PartRecord(number=number, size=length, etag=etag, md5=md5.hex())
        with self._cond:
            self._journal.parts.append(record)
            self._last_progress = time.monotonic()
        self._journal.save(self._spool.journal_path)
        self._log.debug("storage_part_uploaded", part=number, size=length)

    def _sync(self) -> None:
        """Open or resume the multipart upload; ListParts is the authority on resume."""
        self._store.preflight()
        journal = self._journal
        if journal.upload_id is None:
            journal.upload_id = self._store.create_upload(self._key, self._spool.info.recording_id)
            journal.parts = []
        elif not journal.completed:
            try:
                listed = self._store.list_parts(self._key, journal.upload_id)
            except StorageError as exc:
                if exc.kind != "no_upload":
                    raise
                self._restart_or_adopt()
            else:
                accepted = self._accept_listed(_latest_per_number(listed))
                with self._cond:
                    journal.parts = accepted
                self._log.info("storage_upload_resumed", parts=len(accepted), listed=len(listed))
        journal.save(self._spool.journal_path)
        self._rehash(journal.uploaded_bytes)
        self._synced = True

    def _restart_or_adopt(self) -> None:
        """The upload is gone: completed before a crash (adopt it) or expired (start over)."""
        journal = self._journal
        size = self._spool.media_size()
        head = self._store.head(self._key)
        if head is not None and head[0] == size:
            parts = []
            with self._spool.media_path.open("rb") as src:
                for number, offset in enumerate(range(0, max(size, 1), self._part_size), 1):
                    data = src.read(min(self._part_size, size - offset))
                    md5 = hashlib.md5(data).hexdigest()
                    parts.append(PartRecord(number=number, size=len(data), etag=md5, md5=md5))
            with self._cond:
                journal.parts = parts
                journal.completed = True
            self._log.info("storage_upload_adopted", size=size)
            return
        self._log.warning("storage_upload_restarted", reason="upload no longer exists")
        with self._cond:
            journal.parts = []
        journal.upload_id = self._store.create_upload(self._key, self._spool.info.recording_id)

    def _accept_listed(self, listed: list[PartInfo]) -> list[PartRecord]:
        """Keep the leading run of full parts whose bytes match the spool; redo the rest."""
        known = {p.number: p for p in self._journal.parts}
        accepted: list[PartRecord] = []
        size = self._spool.media_size()
        with self._spool.media_path.open("rb") as src:
            for part in listed:
                offset = (part.number - 1) * self._part_size
                if (
                    part.number != len(accepted) + 1
                    or part.size != self._part_size
                    or offset + part.size > size
                ):
                    break
                src.seek(offset)
                md5 = hashlib.md5(src.read(part.size)).hexdigest()
                journaled = known.get(part.number)
                if self._store.encrypted:
                    # Under SSE-C an ETag need not be the MD5: trust only what we journaled.
                    matches = journaled is not None and journaled.etag == part.etag
                    matches = matches and journaled is not None and journaled.md5 == md5
                else:
                    matches = part.etag == md5
                if not matches:
                    break
                accepted.append(
                    PartRecord(number=part.number, size=part.size, etag=part.etag, md5=md5)
                )
        return accepted

    def _rehash(self, upto: int) -> None:
        self._sha = hashlib.sha256()
        with self._spool.media_path.open("rb") as src:
            remaining = upto
            while remaining > 0:
                chunk = src.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    raise OSError(0, "spool shorter than the uploaded parts")
                self._sha.update(chunk)
                remaining -= len(chunk)

    # -- completion ---------------------------------------------------------------------

    def _finalize(self, manifest: Manifest, began: float) -> UploadResult:
        journal = self._journal
        size = self._spool.media_size()
        if journal.uploaded_bytes != size:
            raise StorageError(
                f"spool has {size} bytes but {journal.uploaded_bytes} were uploaded",
                kind="integrity",
                permanent=True,
            )
        if not journal.completed:
            assert journal.upload_id is not None
            listed = self._store.list_parts(self._key, journal.upload_id)
            self._check_parts(_latest_per_number(listed))
            parts = [PartInfo(p.number, p.size, p.etag) for p in journal.parts]
            self._log.info("storage_completing", parts=len(parts), size=size)
            self._store.complete(self._key, journal.upload_id, parts)
            journal.completed = True
            journal.save(self._spool.journal_path)
        mode = self._settings.verify_read
        # Under SSE-C the ETags are not MD5s, so only a full read can prove the bytes.
        full_read = (
            mode == "full" or (mode == "auto" and self._store.loopback) or self._store.encrypted
        )
        sha256 = self._sha.hexdigest()
        verification = verify_object(
            self._store,
            self._key,
            media_path=self._spool.media_path,
            size=size,
            sha256=sha256,
            parts=journal.parts,
            full_read=full_read,
        )
        bucket = getattr(self._store, "bucket", None)
        record = StorageRecord(
            backend="s3" if self._store.backend == "s3" else "local",
            bucket=bucket if isinstance(bucket, str) else None,
            object_key=self._key,
            size=size,
            sha256=sha256,
            etag=None if self._store.encrypted else multipart_etag(journal.parts),
            part_size=self._part_size,
            parts=tuple(
                PartEntry(number=p.number, size=p.size, etag=p.etag) for p in journal.parts
            ),
            encryption="sse-c" if self._store.encrypted else "none",
            verification=verification,
        )
        final = manifest.model_copy(update={"storage": record})
        if final.ended_at is None:
            final = final.model_copy(update={"ended_at": datetime.now(UTC)})
        self._store.put_small(manifest_key(self._key), final.to_json(), "application/json")
        self._spool.delete()
        seconds = time.monotonic() - began
        self._log.info(
            "storage_verified",
            object_key=self._key,
            size=size,
            parts=len(journal.parts),
            sha256_method=verification.sha256_method,
            seconds_to_verified=round(seconds, 3),
        )
        return UploadResult(
            object_key=self._key,
            location=self._store.describe(self._key),
            manifest_key=manifest_key(self._key),
            size=size,
            sha256=sha256,
            parts=len(journal.parts),
            seconds_to_verified=seconds,
            manifest=final,
        )

    def _check_parts(self, listed: list[PartInfo]) -> None:
        """R2 rejects unequal parts only at completion: check everything before asking it."""
        journal = self._journal
        expected = [(p.number, p.size, p.etag) for p in journal.parts]
        actual = [(p.number, p.size, p.etag) for p in listed]
        problem = None
        if actual != expected:
            problem = f"store lists parts {actual[:3]}... but the journal has {expected[:3]}..."
        elif any(p.size != self._part_size for p in listed[:-1]):
            problem = "a non-final part differs from part_size"
        if problem is not None:
            raise StorageError(
                f"ListParts check failed: {problem}", kind="integrity", permanent=True
            )

    # -- alarms -------------------------------------------------------------------------

    def _raise_alarm(self, exc: StorageError) -> None:
        with self._cond:
            self._errors += 1
            self._last_error = str(exc)
            first = not self._alarm
            if first:
                self._alarm = True
                self._alarms += 1
        status = self.status()
        event = self._log.error if first else self._log.warning
        event(
            "storage_alarm" if first else "storage_retry",
            kind=exc.kind,
            error=str(exc),
            bytes_spooled=status.bytes_spooled,
            bytes_uploaded=status.bytes_uploaded,
        )

    def _clear_alarm(self) -> None:
        with self._cond:
            if not self._alarm:
                return
            self._alarm = False
        self._log.info("storage_alarm_cleared", bytes_uploaded=self._journal.uploaded_bytes)


def _latest_per_number(listed: list[PartInfo]) -> list[PartInfo]:
    """One entry per part number, the last listed, in order.

    Uploading a part number again replaces it (S3 semantics), but a store may still list
    the replaced upload (SeaweedFS does after a part upload cut short by a crash and redone
    by ``bot recover``); completion uses the latest, so the check does too.
    """
    latest = {part.number: part for part in listed}
    return [latest[number] for number in sorted(latest)]
