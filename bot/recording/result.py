"""What a recording run ended with: the one value ``bot record`` and the control API report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from bot.exitcodes import ExitCode
from bot.media.report import MediaReport
from bot.realtime import AuthenticationError, RealtimeError, TrackResult
from bot.storage import UploadResult

log = structlog.get_logger("bot.recorder")


@dataclass
class RecordingResult:
    exit_code: ExitCode
    recording_id: str
    path: Path | None = None
    """The verified file (local backend) or the spool copy kept after a storage failure."""
    object_key: str | None = None
    upload: UploadResult | None = None
    stop_reason: str = ""
    error: str | None = None
    media: MediaReport = field(default_factory=MediaReport)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    failed_tracks: list[dict[str, str | None]] = field(default_factory=list)
    """Tracks that were never recorded, or not at the end, and why."""

    def log_finished(self) -> None:
        log.info(
            "recorder.finished",
            stop_reason=self.stop_reason,
            duration_s=round(self.media.duration, 3),
            gaps=len(self.media.gaps),
            verified=self.upload is not None,
            exit_code=int(self.exit_code),
        )

    def summary(self) -> str:
        if self.path is None and self.upload is None:
            return f"no recording: {self.error}"
        where = self.upload.location if self.upload else str(self.path)
        size = self.upload.size if self.upload else 0
        return (
            f"recording {where} duration={self.media.duration:.2f}s "
            f"video_frames={self.media.video_frames} size={size / 1e6:.2f}MB "
            f"gaps={len(self.media.gaps)} verified={self.upload is not None} "
            f"stop={self.stop_reason}"
        )


def exit_code_of(error: RealtimeError) -> ExitCode:
    """A refused secret is the operator's to fix (3); anything else from the API is 4."""
    return ExitCode.REALTIME_AUTH if isinstance(error, AuthenticationError) else ExitCode.REALTIME


def failure_summary(failures: list[TrackResult]) -> str:
    """``": name: [code] description; ..."`` of the pulls that failed, for an error line
    ("" if none did)."""
    if not failures:
        return ""
    return ": " + "; ".join(
        f"{f.trackName}: [{f.errorCode}] {f.errorDescription or ''}".rstrip() for f in failures
    )


def failed(recording_id: str, code: ExitCode, error: str) -> RecordingResult:
    """A run that ended before any file existed."""
    log.error("recorder.failed", error=error, exit_code=int(code))
    return RecordingResult(code, recording_id, None, stop_reason="error", error=error)
