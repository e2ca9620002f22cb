"""The audit trail: who did what to a recording and when, for a clinic's inspector.

An append-only file of JSON lines, one event per line, each fsync'd before the next, so
a crash loses at most the event being written. Every line carries the UTC time, the
consultation and recording ids, the actor (the JWT ``sub`` of a control call, or
``recorder`` for the recorder's own events) and the event name; fields are plain opaque
data. A dedicated structlog logger renders the lines (its own processor chain, so the
process-wide logging configuration neither adds to nor drops from the trail), and the
same redaction rule as the logs runs last.

Writing happens on one thread fed by a queue: ``record`` is safe from the event loop,
the media thread and the upload thread alike, and never waits for the disk.

The file lives beside the spool directory, not inside it: the uploader deletes the spool
once the recording is verified, and the trail must outlive that to be uploaded next to
the recording (``upload_audit``) and only then removed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from bot.config import StorageSettings
from bot.logs import redact_secrets
from bot.storage import UploadStatus
from bot.storage.stores import open_store

log = structlog.get_logger("bot.observe.audit")

AUDIT_SUFFIX: Final = ".audit.jsonl"
CONTENT_TYPE: Final = "application/x-ndjson"
RECORDER_ACTOR: Final = "recorder"

_Item = tuple[str, dict[str, Any]] | concurrent.futures.Future[None] | None


def audit_path(spool_dir: Path, recording_id: str) -> Path:
    """Where a recording's trail is kept locally until it is stored."""
    return spool_dir / f"{recording_id}{AUDIT_SUFFIX}"


def audit_key(object_key: str) -> str:
    """The trail's object key: next to the recording, like its manifest."""
    return object_key + AUDIT_SUFFIX


_LEADING: Final = ("consultation_id", "recording_id", "actor", "event")


def _stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """UTC time first, then who and what, then the details: how an auditor reads a line."""
    line: dict[str, Any] = {"time": datetime.now(UTC).isoformat(timespec="milliseconds")}
    line.update((key, event[key]) for key in _LEADING if key in event)
    line.update((key, value) for key, value in event.items() if key not in line)
    return line


class _LineSink:
    """The structlog "logger" behind the audit logger: returns the rendered line."""

    def msg(self, line: str) -> str:
        return line


class AuditLog:
    """One recording's trail. ``record`` enqueues; ``flush`` and ``close`` wait for disk."""

    def __init__(self, path: Path, consultation_id: str, recording_id: str) -> None:
        self.path = path
        self.consultation_id = consultation_id
        self.recording_id = recording_id
        self._render = structlog.wrap_logger(
            _LineSink(),
            wrapper_class=structlog.BoundLogger,
            processors=[_stamp, redact_secrets, structlog.processors.JSONRenderer()],
            context_class=dict,
        )
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the end whatever else touched the file.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._thread = threading.Thread(target=self._write_loop, name="audit", daemon=True)
        self._thread.start()

    def record(self, event: str, *, actor: str = RECORDER_ACTOR, **fields: Any) -> None:
        """Append one event. Fields must be plain, opaque data: never names or secrets."""
        with self._lock:
            if self._closed:
                log.warning("audit.closed_event_dropped", audit_event=event)
                return
            self._queue.put(
                (
                    event,
                    {
                        "consultation_id": self.consultation_id,
                        "recording_id": self.recording_id,
                        "actor": actor,
                        **fields,
                    },
                )
            )

    async def flush(self) -> None:
        """Wait until every event recorded so far is on disk."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                return
            self._queue.put(done)
        await asyncio.wrap_future(done)

    async def close(self) -> None:
        """Write what is queued, then stop the writer; later events are dropped (logged)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        os.close(self._fd)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, concurrent.futures.Future):
                item.set_result(None)
                continue
            event, fields = item
            try:
                line = self._render.msg(event, **fields)
                os.write(self._fd, (line + "\n").encode("utf-8"))
                os.fsync(self._fd)
            except (OSError, TypeError, ValueError) as exc:
                # The recording goes on; the hole in the trail is in the logs.
                log.error("audit.write_failed", audit_event=event, error=str(exc))


async def follow_uploads(
    audit: AuditLog, status: Callable[[], UploadStatus | None], interval: float = 1.0
) -> None:
    """Audit each stored part and each store outage, read from the uploader's status.

    The uploader is not audit-aware; polling its non-blocking status keeps it so. Runs
    until cancelled; the final parts are audited with the verification by the recorder.
    """
    parts, alarm = 0, False
    while True:
        upload = status()
        if upload is not None:
            if upload.parts > parts:
                audit.record(
                    "upload.parts_stored",
                    parts=upload.parts,
                    bytes_uploaded=upload.bytes_uploaded,
                )
                parts = upload.parts
            if upload.alarm != alarm:
                alarm = upload.alarm
                audit.record(
                    "upload.store_failing" if alarm else "upload.store_recovered",
                    errors=upload.errors,
                )
        await asyncio.sleep(interval)


def upload_audit(settings: StorageSettings, object_key: str, path: Path) -> str:
    """Store the trail next to the verified recording, then remove the local copy.

    Blocking (file read and object store call): run it in a thread. Raises
    ``StorageError`` and keeps the file when the store refuses it.
    """
    key = audit_key(object_key)
    open_store(settings).put_small(key, path.read_bytes(), CONTENT_TYPE)
    path.unlink()
    return key
