"""A recording with everything around it: control API, audit trail, metrics, webhook, panel.

``ControlledRecording(settings).run()`` is what ``bot record`` runs. The recorder itself
knows none of these: they observe it (status, events) and call its public control
methods, so the recorder's lifecycle and exit codes stay exactly its own. The recorder's
audit trail (``recorder.audit``) gets the start and the pulled tracks here, the control
calls from the server, and the stored parts from ``follow_uploads``; the recorder seals
and stores it with the recording. A failure of any of these side services is logged and
never fails the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.observe.metrics import Metrics
from bot.observe.progress import Progress
from bot.observe.uploads import follow_uploads
from bot.observe.webhook import Webhook
from bot.recording import Recorder, RecordingResult
from bot.storage import UploadStatus, audit_key

if TYPE_CHECKING:
    from bot.control.server import ControlServer


class ControlledRecording:
    """One consultation's recorder and its side services; ``run`` once."""

    def __init__(self, settings: Settings, *, progress: bool = True) -> None:
        self.settings = settings
        self.recorder = Recorder(settings)
        recorder = self.recorder
        self.audit = recorder.audit
        self.metrics = Metrics(recorder)
        self.webhook = Webhook(settings.webhook)
        self.server: ControlServer | None = None
        if settings.control.enabled:
            # Loaded only when enabled: the HTTP server (aiohttp) costs about 10 MB that
            # a recorder without the control API never needs.
            from bot.control.server import ControlServer

            self.server = ControlServer(
                recorder, settings.control, self.audit, self.metrics, self._notify
            )
        self._progress = Progress.for_terminal(recorder) if progress else None

    async def run(self) -> RecordingResult:
        recorder, audit = self.recorder, self.audit
        audit.record("recorder.starting", layout=recorder.roster.roles)
        try:
            if self.server is not None:
                await self.server.start()
            self.metrics.start()
            running = asyncio.create_task(recorder.run(), name="recorder")
            watcher = asyncio.create_task(self._on_started(), name="recorder-started")
            try:
                result = await running
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await self._finished(result)
            return result
        finally:
            if self._progress is not None:
                await self._progress.stop()
            await self.metrics.stop()
            if self.server is not None:
                await self.server.stop()
            await self.webhook.aclose()

    def _notify(self, event: str, fields: dict[str, Any]) -> None:
        self.webhook.notify(event, {**self._ids(), **fields})

    def _ids(self) -> dict[str, Any]:
        return {
            "consultation_id": self.recorder.consultation_id,
            "recording_id": self.recorder.recording_id,
        }

    async def _on_started(self) -> None:
        """Audit and announce the start, then follow the upload until the end."""
        recorder = self.recorder
        await recorder.started.wait()
        status = recorder.status()
        self.audit.record(
            "recorder.started",
            participants=[{"id": p.id, "role": p.role} for p in status.participants],
            tracks=len(status.tracks),
        )
        for track in status.tracks:
            self.audit.record("track.pulled", participant_id=track.participant, kind=track.kind)
        self.webhook.notify("recording.started", self._ids())
        if self._progress is not None:
            self._progress.start()

        def upload_status() -> UploadStatus | None:
            return recorder.status().upload

        await follow_uploads(self.audit, upload_status)

    async def _finished(self, result: RecordingResult) -> None:
        ids = self._ids()
        self.webhook.notify("recording.stopped", {**ids, "stop_reason": result.stop_reason})
        if result.upload is None:
            self.webhook.notify("recording.failed", {**ids, "exit_code": int(result.exit_code)})
            return
        upload = result.upload
        self.webhook.notify(
            "recording.completed",
            {
                **ids,
                "object_key": upload.object_key,
                "manifest_key": upload.manifest_key,
                "audit_key": audit_key(upload.object_key),
                "stored_beside": list(upload.sidecars),
                "size": upload.size,
                "sha256": upload.sha256,
                "duration_s": round(result.media.duration, 3),
            },
        )
