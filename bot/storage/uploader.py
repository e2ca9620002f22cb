"""Streaming a growing spool to the store while the recording runs, from a worker thread.

The recorder appends fragments to the spool and pokes; the worker uploads every full
``part_size`` slice as soon as it exists, hashing as it goes, and journals after each
part, so the end of a recording leaves only the tail to upload. While no part is due it
probes the store every ``probe_interval``, so an outage is known within about that long
rather than when the next part is due. When the store is down it raises an alarm, keeps
its place and backs off while the recording keeps growing on disk; only a store call that
succeeds clears the alarm, and the upload catches up when the store returns. While the
recording grows it also enforces the spool's disk caps, so ``status`` is a plain read.
``finish`` has the worker upload the tail, then ``finalize`` completes and verifies
(retried here until ``finish_timeout``); opening or resuming the upload is ``resume``. No
byte is lost
to a failure on the way: the spool stays until the object is verified.
"""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from dataclasses import dataclass
from typing import Literal

import structlog

from bot.config import StorageSettings
from bot.manifest import Manifest
from bot.storage.errors import StorageError
from bot.storage.finalize import Seal, UploadResult, finalize, unsealed
from bot.storage.journal import Journal, PartRecord
from bot.storage.multipart import PartBody
from bot.storage.resume import ContentHashes, open_or_resume
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore

log = structlog.get_logger("bot.storage")

_POLL_SECONDS = 1.0
"""Tail the spool at least this often even without pokes (a writer may forget to poke)."""
_FIRST_BACKOFF = 0.5

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
        self._hashes = ContentHashes()
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
        self._last_answer = time.monotonic()
        """When the store last answered a call: the worker's clock for the next probe."""
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
        """The spool grew (a fragment was written): check the disk caps, wake the worker.

        The caps are checked here as well as on the worker's turns because the worker may
        be busy with a part or backing off from a failing store while the spool grows.
        """
        self._enforce_disk_caps()
        with self._cond:
            self._cond.notify()

    def status(self) -> UploadStatus:
        """A snapshot for the recorder's watch loop and metrics; only reads."""
        spooled = self._spool.media_size()
        free = self._spool.free_bytes()
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

    def finish(self, manifest: Manifest, seal: Seal = unsealed) -> UploadResult:
        """Upload the tail, complete, verify, seal and store the manifest, delete the spool.

        Blocking: call it from a thread (``asyncio.to_thread``). On failure it raises
        ``StorageError`` and leaves the spool and journal for ``bot recover``.
        """
        began = time.monotonic()
        if manifest.recording_id != self._spool.info.recording_id:
            raise ValueError("manifest belongs to another recording")
        with self._cond:
            # Set before a worker can start (``bot recover`` starts it here): a spool being
            # finished no longer grows, so the worker leaves its disk caps alone.
            self._finishing = True
        self.start()
        with self._cond:
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
        return self._finalize_until_deadline(manifest, seal, began)

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
            if not finishing:
                self._enforce_disk_caps()  # pokes may not come: a writer may forget them
            try:
                answered = self._upload_available(final=finishing)
                if not answered and not finishing and self._probe_due():
                    answered = self._probe()
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
            if answered:
                self._last_answer = time.monotonic()
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

    def _enforce_disk_caps(self) -> None:
        """Latch the first disk cap the recording reaches; the recorder stops on it."""
        settings = self._settings
        reached = self._spool.disk_limit(
            max_spool_bytes=settings.max_spool_bytes, min_free_bytes=settings.min_free_bytes
        )
        with self._cond:
            if reached is None or self._disk_limit is not None:
                return
            self._disk_limit = reached.cap
        self._log.error(
            "storage_disk_limit",
            limit=reached.cap,
            bytes_spooled=reached.bytes_spooled,
            free_bytes=reached.free_bytes,
            max_spool_bytes=settings.max_spool_bytes,
            min_free_bytes=settings.min_free_bytes,
        )

    def _upload_available(self, *, final: bool) -> bool:
        """Upload every part that is ready; whether the store answered a call."""
        answered = False
        if not self._synced:
            self._sync()
            answered = True
        if self._journal.completed:
            return answered
        size = self._spool.media_size()
        while True:
            offset = self._journal.uploaded_bytes
            remaining = size - offset
            if remaining >= self._part_size:
                self._upload_part(offset, self._part_size)
            elif final and (remaining > 0 or not self._journal.parts):
                self._upload_part(offset, remaining)
            else:
                return answered
            answered = True

    def _probe_due(self) -> bool:
        """At once while the alarm is up (nothing else would clear it), else on the interval."""
        with self._cond:
            alarm = self._alarm
        return alarm or time.monotonic() - self._last_answer >= self._settings.probe_interval

    def _probe(self) -> bool:
        upload_id = self._journal.upload_id
        if upload_id is None or self._journal.completed:
            return False
        self._store.probe(self._key, upload_id)
        return True

    def _upload_part(self, offset: int, length: int) -> None:
        """Read the part twice from the spool (to hash, then as it is sent) rather than
        hold it in memory; the store checks the bytes it got against the MD5 sent."""
        number = len(self._journal.parts) + 1
        upload_id = self._journal.upload_id
        assert upload_id is not None
        with PartBody(self._spool.media_path, offset, length) as body:
            md5 = hashlib.md5()
            hashes = self._hashes.copy()
            for chunk in body.chunks():
                md5.update(chunk)
                hashes.update(chunk)
            self._log.debug("storage_part_uploading", part=number, size=length)
            etag = self._store.upload_part(self._key, upload_id, number, body, md5.digest())
        if not self._store.encrypted and etag != md5.hexdigest():
            raise StorageError(
                f"store returned ETag {etag} for part {number}, expected its MD5",
                kind="integrity",
                permanent=False,
            )
        self._hashes = hashes
        record = PartRecord(number=number, size=length, etag=etag, md5=md5.hexdigest())
        # On disk first: a part that ``status`` counts is one a crash cannot lose.
        journal = self._journal.model_copy(update={"parts": [*self._journal.parts, record]})
        journal.save(self._spool.journal_path)
        with self._cond:
            self._journal = journal
            self._last_progress = time.monotonic()
        self._log.debug("storage_part_uploaded", part=number, size=length)

    def _sync(self) -> None:
        """Open or resume the multipart upload, and hash what the store already holds."""
        journal = open_or_resume(self._store, self._spool, self._journal, self._log)
        with self._cond:
            self._journal = journal
        journal.save(self._spool.journal_path)
        self._hashes = ContentHashes.of_prefix(self._spool.media_path, journal.uploaded_bytes)
        self._synced = True

    # -- completion -------------------------------------------------------------------

    def _finalize_until_deadline(
        self, manifest: Manifest, seal: Seal, began: float
    ) -> UploadResult:
        """Complete and verify, retrying a failing store until ``finish_timeout``."""
        deadline = began + self._settings.finish_timeout
        backoff = _FIRST_BACKOFF
        while True:
            try:
                result = finalize(
                    self._store,
                    self._spool,
                    self._journal,
                    hashes=self._hashes,
                    manifest=manifest,
                    seal=seal,
                    verify_read=self._settings.verify_read,
                    began=began,
                    log=self._log,
                )
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
