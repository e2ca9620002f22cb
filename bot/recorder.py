"""One consultation, from session to finished file: the recorder's lifecycle.

Order matters: the Cloudflare session is created first (a wrong secret fails before any
file exists), then the media pipeline starts the timeline, then tracks are pulled. Stop
reasons: a signal, the duration limit, every track silent for ``silence_timeout``, or the
transport failing. Whatever the reason, the pipeline is finished so the MP4 is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from bot.config import ConfigError, Settings
from bot.exitcodes import ExitCode
from bot.media.pipeline import MediaPipeline, MediaReport, SlotInfo
from bot.media.writer import Mp4Writer
from bot.realtime import AuthenticationError, RealtimeClient, RealtimeError
from bot.subscriber import Subscriber

log = structlog.get_logger("bot.recorder")


@dataclass
class RecordingResult:
    exit_code: ExitCode
    recording_id: str
    path: Path | None = None
    stop_reason: str = ""
    error: str | None = None
    media: MediaReport = field(default_factory=MediaReport)
    started_at: datetime | None = None
    ended_at: datetime | None = None

    def summary(self) -> str:
        if self.path is None:
            return f"no recording: {self.error}"
        size = self.path.stat().st_size if self.path.exists() else 0
        return (
            f"recording {self.path} duration={self.media.duration:.2f}s "
            f"video_frames={self.media.video_frames} size={size / 1e6:.2f}MB "
            f"gaps={len(self.media.gaps)} stop={self.stop_reason}"
        )


async def record(settings: Settings) -> RecordingResult:
    """Record until a stop condition; returns a result that always says what happened."""
    rec = settings.recording
    recording_id = uuid.uuid4().hex
    if rec.consultation_id is None:
        raise ConfigError(
            "no consultation id: pass --consultation-id ID (an opaque id, never patient data) "
            "or set BOT_RECORDING_CONSULTATION_ID"
        )
    structlog.contextvars.bind_contextvars(
        consultation_id=rec.consultation_id, recording_id=recording_id
    )
    if not rec.participants:
        raise ConfigError(
            "no participants to record: pass --participant ID:ROLE=SESSION_ID/TRACK,... "
            "or set [[recording.participants]] in config.toml"
        )
    try:
        client = RealtimeClient(
            settings.realtime.app_id,
            settings.realtime.app_secret.get_secret_value(),
            base_url=settings.realtime.base_url,
            timeout=settings.realtime.request_timeout,
            max_retries=settings.realtime.max_retries,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    async with client:
        origin_wall = time.time()
        started_at = datetime.now(UTC)
        pipeline: MediaPipeline | None = None
        subscriber = Subscriber(
            client,
            lambda slot, t, frame: pipeline.submit(slot, t, frame) if pipeline else None,
            origin_wall=origin_wall,
            ice_servers=settings.realtime.ice_servers,
        )
        try:
            await subscriber.open()
        except AuthenticationError as exc:
            await subscriber.close()
            return _failed(recording_id, ExitCode.REALTIME_AUTH, str(exc))
        except RealtimeError as exc:
            await subscriber.close()
            return _failed(recording_id, ExitCode.REALTIME, str(exc))

        rec.output_dir.mkdir(parents=True, exist_ok=True)
        path = rec.output_dir / f"{rec.consultation_id}-{recording_id}.mp4"
        slots = [SlotInfo(p.id, p.role) for p in rec.participants]
        writer = Mp4Writer(
            path,
            width=rec.width,
            height=rec.height,
            fps=rec.fps,
            video_bitrate=rec.video_bitrate,
            keyframe_seconds=rec.keyframe_seconds,
            audio_codec=rec.audio_codec,
            audio_bitrate=rec.audio_bitrate,
            speaker_titles=[p.role for p in rec.participants],
        )
        pipeline = MediaPipeline(
            writer,
            slots,
            width=rec.width,
            height=rec.height,
            fps=rec.fps,
            origin_wall=origin_wall,
            latency=rec.latency,
        )
        pipeline.start()
        log.info("recorder.started", participants=len(slots), path=str(path))

        result = RecordingResult(ExitCode.OK, recording_id, path, started_at=started_at)
        try:
            await _pull_everyone(settings, subscriber, result)
            if result.exit_code == ExitCode.OK:
                result.stop_reason = await _wait_for_stop(settings, subscriber, pipeline)
        except RealtimeError as exc:
            result.exit_code = ExitCode.REALTIME
            result.error = str(exc)
            result.stop_reason = "realtime_error"
        finally:
            end = pipeline.now()
            await subscriber.close()
            result.media = await asyncio.to_thread(pipeline.finish, end)
            result.ended_at = datetime.now(UTC)
            if not subscriber.tracks:
                path.unlink(missing_ok=True)  # nothing was recorded: leave no empty file
                result.path = None
        log.info(
            "recorder.finished",
            stop_reason=result.stop_reason,
            duration_s=round(result.media.duration, 3),
            gaps=len(result.media.gaps),
            exit_code=int(result.exit_code),
        )
        if result.error:
            log.error("recorder.error", error=result.error)
        return result


async def _pull_everyone(
    settings: Settings, subscriber: Subscriber, result: RecordingResult
) -> None:
    failures = []
    for slot, participant in enumerate(settings.recording.participants):
        failures += await subscriber.pull(participant, slot)
    if failures and not subscriber.tracks:
        detail = "; ".join(f"{f.trackName}: [{f.errorCode}] {f.errorDescription}" for f in failures)
        result.exit_code = ExitCode.REALTIME
        result.error = f"no track could be pulled ({detail}); check the SESSION_ID/TRACK references"
        result.stop_reason = "no_tracks"


async def _wait_for_stop(
    settings: Settings, subscriber: Subscriber, pipeline: MediaPipeline
) -> str:
    rec = settings.recording
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason = ""

    def on_signal(name: str) -> None:
        nonlocal reason
        reason = reason or name
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        while not stop.is_set():
            now = pipeline.now()
            last = subscriber.last_media()
            silent_for = time.time() - last if last else now
            if now >= rec.max_duration:
                return "duration_limit"
            if silent_for >= rec.silence_timeout:
                return "silence_timeout"
            if subscriber.failed.is_set():
                return "transport_failed"
            if not pipeline.alive:
                return "media_failed"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(0.25, rec.max_duration - now))
        return reason.lower()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def _failed(recording_id: str, code: ExitCode, error: str) -> RecordingResult:
    log.error("recorder.failed", error=error, exit_code=int(code))
    return RecordingResult(code, recording_id, None, stop_reason="error", error=error)
