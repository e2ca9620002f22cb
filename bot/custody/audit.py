"""The audit trail: who did what to a recording and when, as evidence an inspector can check.

An append-only file of JSON lines, one event per line, each fsync'd before the next, so
a crash loses at most the event being written. Every line carries the UTC time, its
sequence number, the consultation and recording ids, the actor (the JWT ``sub`` of a
control call, ``recorder`` for the recorder's own events, ``recover`` for ``bot
recover``), the event name, its fields, and ``prev``: the SHA-256 of the line before it
as written (``GENESIS`` for the first). Editing or removing a line breaks the next
line's ``prev``; the manifest carries the last line's hash (``head``), so the end cannot
be cut off unseen either.

A dedicated structlog logger renders the lines (its own processor chain, so the
process-wide logging configuration neither adds to nor drops from the trail), and the
same redaction rule as the logs runs last. Writing happens on one thread fed by a queue:
``record`` is safe from the event loop, the media thread and the upload thread alike,
and never waits for the disk; the chain is advanced on that thread only.

A trail reopened after a crash (``bot recover``) continues the chain from its last line.
Once ``seal`` has given the head to the manifest, later events cannot be part of the
stored record: they are refused and logged instead of written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from bot.config import ConfigError
from bot.custody.chain import GENESIS, line_hash, read_trail
from bot.logs import redact_secrets
from bot.storage.spool import trail_path

log = structlog.get_logger("bot.custody.audit")

CONTENT_TYPE: Final = "application/x-ndjson"
RECORDER_ACTOR: Final = "recorder"
RECOVER_ACTOR: Final = "recover"

_Item = tuple[str, dict[str, Any]] | concurrent.futures.Future[None] | None
_LEADING: Final = ("seq", "consultation_id", "recording_id", "actor", "event")


@dataclass(frozen=True)
class TrailHead:
    """How long the trail is and the hash of its last line: what the manifest seals."""

    lines: int
    head: str


def _stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """UTC time first, then who and what, then the details, ``prev`` last: how an auditor
    reads a line."""
    line: dict[str, Any] = {"time": datetime.now(UTC).isoformat(timespec="milliseconds")}
    line.update((key, event[key]) for key in _LEADING if key in event)
    line.update((key, value) for key, value in event.items() if key not in line and key != "prev")
    line["prev"] = event["prev"]
    return line


class _LineSink:
    """The structlog "logger" behind the audit logger: returns the rendered line."""

    def msg(self, line: str) -> str:
        return line


class AuditLog:
    """One recording's trail. ``record`` enqueues; ``flush``, ``seal`` and ``close`` wait
    for the disk."""

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
        self._sealed = False
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = read_trail(path) if path.exists() else []
        self._lines = len(existing)
        self._head = line_hash(existing[-1]) if existing else GENESIS
        # O_APPEND: every write lands at the end whatever else touched the file.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if existing and not path.read_bytes().endswith(b"\n"):
            os.write(self._fd, b"\n")  # a line torn by a crash stays, as it was written
        self._thread = threading.Thread(target=self._write_loop, name="audit", daemon=True)
        self._thread.start()

    @classmethod
    def beside_spool(cls, spool_dir: Path, consultation_id: str, recording_id: str) -> AuditLog:
        """A recording's trail where ``bot recover`` finds it; ``ConfigError`` if it
        cannot be written there."""
        try:
            return cls(trail_path(spool_dir, recording_id), consultation_id, recording_id)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the audit trail under storage.spool_dir {spool_dir} "
                f"({exc.strerror}); point it at a writable directory"
            ) from None

    def record(self, event: str, *, actor: str = RECORDER_ACTOR, **fields: Any) -> None:
        """Append one event. Fields must be plain, opaque data: never names or secrets."""
        with self._lock:
            if self._closed or self._sealed:
                log.warning(
                    "audit.event_after_seal" if self._sealed else "audit.closed_event_dropped",
                    audit_event=event,
                )
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
        done = self._barrier()
        if done is not None:
            await asyncio.wrap_future(done)

    def seal(self) -> TrailHead:
        """Write what is queued and close the trail to new events: its head goes into the
        manifest. Blocking: for the upload thread, never the event loop."""
        done = self._barrier()
        if done is not None:
            done.result()
        with self._lock:
            self._sealed = True
        return TrailHead(self._lines, self._head)

    async def close(self) -> None:
        """Write what is queued, then stop the writer; later events are dropped (logged)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        os.close(self._fd)

    def _barrier(self) -> concurrent.futures.Future[None] | None:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                return None
            self._queue.put(done)
        return done

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
                line = self._render.msg(event, seq=self._lines, prev=self._head, **fields)
                os.write(self._fd, (line + "\n").encode("utf-8"))
                os.fsync(self._fd)
            except (OSError, TypeError, ValueError) as exc:
                # The recording goes on; the hole in the trail is in the logs.
                log.error("audit.write_failed", audit_event=event, error=str(exc))
                continue
            self._head = line_hash(line.encode("utf-8"))
            self._lines += 1
