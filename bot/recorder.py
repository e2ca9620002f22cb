"""One consultation, from session to verified object: the recorder's lifecycle.

Order matters: the Cloudflare session is created first and the configured tracks pulled
(a wrong secret or no pullable track fails before any file exists); then the spool, the
uploader and the media pipeline start. Participants can join, leave and come back while it records
(``add_participant``/``drop_participant``); each keeps one cell of the grid and one speaker
track, chosen by role. Stop reasons: a signal or ``stop()``, the duration limit, every
track silent for ``silence_timeout``, the transport failing. Whatever the reason, the
pipeline is finished so the MP4 is complete, then uploaded and verified.
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
from typing import Any

import structlog

from bot.config import ConfigError, Participant, Settings, TrackRef
from bot.exitcodes import ExitCode
from bot.manifest import AudioInfo, Gap, Manifest, ParticipantEntry, TrackEntry, VideoInfo
from bot.media.pipeline import MediaPipeline, MediaReport, SlotInfo
from bot.media.writer import Mp4Writer
from bot.realtime import AuthenticationError, RealtimeClient, RealtimeError, TrackResult
from bot.rtc.aiortc_compat import AiortcCompatError, check_private_api
from bot.rtc.subscriber import PulledTrack, Subscriber
from bot.storage import Spool, StorageError, Uploader, UploadResult, object_key_for, open_uploader
from bot.tasks import stop_task

log = structlog.get_logger("bot.recorder")

DEFAULT_LAYOUT = ("clinician", "patient")

PROBE_INTERVAL = 0.5
REBUILD_BACKOFF_MAX = 2.0
REPULL_FIRST = 1.0
REPULL_BACKOFF_MAX = 10.0

_FAILED_STOPS = {
    "connect_timeout": (
        ExitCode.REALTIME,
        "WebRTC did not connect within recording.connect_timeout: check that UDP to "
        "Cloudflare (or the ICE servers in realtime.ice_servers) is reachable",
    ),
    "media_failed": (ExitCode.MEDIA, "the media thread failed; see media.thread_failed"),
    "disk_limit": (
        ExitCode.STORAGE,
        "the spool reached its disk limit (storage.max_spool_bytes or storage.min_free_bytes); "
        "the recording up to that point is kept",
    ),
}
"""Stop reasons that are failures, with their exit code and the line a person reads."""


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


class Recorder:
    """Records one consultation; its public methods are what the control API calls."""

    def __init__(self, settings: Settings) -> None:
        rec = settings.recording
        if rec.consultation_id is None:
            raise ConfigError(
                "no consultation id: pass --consultation-id ID (an opaque id, never patient "
                "data) or set BOT_RECORDING_CONSULTATION_ID"
            )
        self.settings = settings
        self.consultation_id: str = rec.consultation_id
        self.recording_id = uuid.uuid4().hex
        roles = rec.layout or tuple(p.role for p in rec.participants) or DEFAULT_LAYOUT
        self.slots: list[SlotInfo] = [SlotInfo("", role) for role in roles]
        self._participants: dict[str, tuple[Participant, int]] = {}
        self._ever: dict[str, Participant] = {}
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._subscriber: Subscriber | None = None
        self._retired: list[PulledTrack] = []
        """Tracks of subscribers replaced after a transport failure (for the manifest)."""
        self.rebuilds = 0
        self._pipeline: MediaPipeline | None = None
        self._uploader: Uploader | None = None
        self.started = asyncio.Event()
        self.origin_wall: float | None = None
        """Unix time of timeline second 0, once running."""
        try:
            self._client = RealtimeClient(
                settings.realtime.app_id,
                settings.realtime.app_secret.get_secret_value(),
                base_url=settings.realtime.base_url,
                timeout=settings.realtime.request_timeout,
                max_retries=settings.realtime.max_retries,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # -- live control ------------------------------------------------------------------

    async def add_participant(self, participant: Participant) -> list[TrackResult]:
        """Pull a participant's tracks into its role's cell; returns per-track failures.

        A returning participant (same id, perhaps a new session) gets its old cell back.
        Frames that arrive before the media pipeline exists (the first pulls, a few
        milliseconds) are dropped.
        """
        assert self._subscriber is not None, "the recorder is not running"
        if participant.id in self._participants:
            await self.drop_participant(participant.id)
        slot = self._slot_for(participant)
        self._participants[participant.id] = (participant, slot)
        self._ever[participant.id] = participant
        self.slots[slot] = SlotInfo(participant.id, participant.role)
        if self._pipeline is not None:
            self._pipeline.assign(slot, self.slots[slot])
        failures = await self._subscriber.pull(participant, slot)
        log.info(
            "recorder.participant_added",
            participant=participant.id,
            role=participant.role,
            slot=slot,
            failed_tracks=len(failures),
        )
        return failures

    async def drop_participant(self, participant_id: str) -> None:
        """Stop pulling a participant's tracks; its cell shows black until it returns."""
        assert self._subscriber is not None, "the recorder is not running"
        if participant_id not in self._participants:
            raise KeyError(participant_id)
        _, slot = self._participants.pop(participant_id)
        if self._pipeline is not None:
            self._pipeline.cut(slot, self._pipeline.now())
        await self._subscriber.drop(participant_id)
        log.info("recorder.participant_dropped", participant=participant_id)

    def pause(self) -> None:
        assert self._pipeline is not None
        self._pipeline.pause(self._pipeline.now())
        log.info("recorder.paused")

    def resume(self) -> None:
        assert self._pipeline is not None
        self._pipeline.resume(self._pipeline.now())
        log.info("recorder.resumed")

    def stop(self, reason: str = "stop_requested") -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def subscriber(self) -> Subscriber | None:
        """The current WebRTC side (replaced when the transport is rebuilt)."""
        return self._subscriber

    @property
    def pipeline(self) -> MediaPipeline | None:
        return self._pipeline

    @property
    def uploader(self) -> Uploader | None:
        return self._uploader

    def status(self) -> dict[str, Any]:
        pipeline, subscriber, uploader = self._pipeline, self._subscriber, self._uploader
        upload = uploader.status() if uploader is not None else None
        return {
            "consultation_id": self.consultation_id,
            "recording_id": self.recording_id,
            "duration_s": round(pipeline.now(), 3) if pipeline else 0.0,
            "paused": pipeline.paused if pipeline else False,
            "participants": [
                {"id": p.id, "role": p.role, "slot": slot}
                for p, slot in self._participants.values()
            ],
            "tracks": subscriber.track_status() if subscriber else [],
            "bytes_recorded": upload.bytes_spooled if upload else 0,
            "bytes_uploaded": upload.bytes_uploaded if upload else 0,
            "upload_alarm": upload.alarm if upload else False,
            "disk_limit": upload.disk_limit if upload else None,
            "last_error": upload.last_error if upload else None,
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> RecordingResult:
        """Record until a stop condition; the result always says what happened."""
        structlog.contextvars.bind_contextvars(
            consultation_id=self.consultation_id, recording_id=self.recording_id
        )
        try:
            await check_private_api()  # before any network call
        except AiortcCompatError as exc:
            return _failed(self.recording_id, ExitCode.FAILURE, str(exc))
        async with self._client:
            return await self._run()

    async def _run(self) -> RecordingResult:
        settings, rec = self.settings, self.settings.recording
        origin_wall = self.origin_wall = time.time()
        started_at = datetime.now(UTC)
        subscriber = self._new_subscriber()
        self._subscriber = subscriber
        try:
            await subscriber.open()
        except RealtimeError as exc:
            await subscriber.close()
            code = (
                ExitCode.REALTIME_AUTH
                if isinstance(exc, AuthenticationError)
                else ExitCode.REALTIME
            )
            return _failed(self.recording_id, code, str(exc))
        try:
            for participant in rec.participants:
                await self.add_participant(participant)
        except RealtimeError as exc:
            await subscriber.close()
            return _failed(self.recording_id, ExitCode.REALTIME, str(exc))
        if rec.participants and not subscriber.tracks:
            # Nothing to record: fail before any file or upload exists.
            await subscriber.close()
            return _failed(
                self.recording_id,
                ExitCode.REALTIME,
                "no track could be pulled; check the SESSION_ID/TRACK references"
                + _failure_detail(subscriber),
            )

        object_key = object_key_for(
            settings.storage,
            consultation_id=self.consultation_id,
            recording_id=self.recording_id,
            started_at=started_at,
        )
        spool, uploader, writer = await asyncio.to_thread(
            self._prepare_spool, object_key, started_at
        )
        self._uploader = uploader
        pipeline = MediaPipeline(
            writer,
            self.slots,
            width=rec.width,
            height=rec.height,
            fps=rec.fps,
            origin_wall=origin_wall,
            latency=rec.latency,
        )
        self._pipeline = pipeline
        uploader.start()
        pipeline.start()
        self.started.set()
        log.info("recorder.started", slots=[s.role for s in self.slots], object_key=object_key)

        result = RecordingResult(
            ExitCode.OK, self.recording_id, object_key=object_key, started_at=started_at
        )
        watchdog = asyncio.create_task(self._watch_transport(), name="transport-watchdog")
        repull = asyncio.create_task(self._repull_tracks(), name="repull-tracks")
        try:
            result.stop_reason = await self._wait_for_stop()
            failure = _FAILED_STOPS.get(result.stop_reason)
            if failure is not None:
                result.exit_code, result.error = failure
        except RealtimeError as exc:
            result.exit_code = ExitCode.REALTIME
            result.error = str(exc)
            result.stop_reason = "realtime_error"
        finally:
            end = pipeline.now()
            await stop_task(watchdog)
            await stop_task(repull)
            # Frames up to ``end`` still in flight arrive while the pipeline finishes.
            result.media = await asyncio.to_thread(pipeline.finish, end)
            result.failed_tracks = [f.report() for f in self._subscriber.failed_tracks.values()]
            await self._subscriber.close()
            result.ended_at = datetime.now(UTC)

        manifest = self._manifest(started_at, result.ended_at, result.media)
        try:
            result.upload = await asyncio.to_thread(uploader.finish, manifest)
            result.path = _local_copy(settings, result.upload)
        except StorageError as exc:
            result.exit_code = ExitCode.STORAGE
            result.error = (
                f"{exc}; the recording is complete in {spool.directory}: run `bot recover`"
            )
            result.path = spool.media_path
        log.info(
            "recorder.finished",
            stop_reason=result.stop_reason,
            duration_s=round(result.media.duration, 3),
            gaps=len(result.media.gaps),
            verified=result.upload is not None,
            exit_code=int(result.exit_code),
        )
        return result

    def _new_subscriber(self) -> Subscriber:
        assert self.origin_wall is not None
        return Subscriber(
            self._client,
            self._submit,
            origin_wall=self.origin_wall,
            ice_servers=self.settings.realtime.ice_servers,
            simulcast_layer=self.settings.recording.simulcast_layer or None,
        )

    async def _watch_transport(self) -> None:
        """Probe the path to the SFU every half second; rebuild when it stays dead.

        Absent media proves nothing (Cloudflare does not signal a publisher leaving), and
        aiortc declares a dead path only when ICE consent expires, about 30 s later, with
        no ICE restart. A STUN check answered proves the path; ``transport_dead_after``
        seconds without an answer (or a failed connection) start a rebuild.
        """
        dead_after = self.settings.realtime.transport_dead_after
        last_alive = time.monotonic()
        while True:
            asked = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL)
            subscriber = self._subscriber
            assert subscriber is not None
            alive = await subscriber.probe(answer_within=PROBE_INTERVAL)
            now = time.monotonic()
            starved = now - asked > 3 * PROBE_INTERVAL
            if alive or starved or (alive is None and not subscriber.failed.is_set()):
                # A starved event loop cannot read the answer in time: that proves nothing
                # about the path, and a rebuild would only add load.
                last_alive = now
                continue
            if now - last_alive < dead_after and not subscriber.failed.is_set():
                continue
            log.warning("recorder.transport_dead", silent_s=round(now - last_alive, 2))
            await self._rebuild()
            last_alive = time.monotonic()

    async def _repull_tracks(self) -> None:
        """Pull again, with backoff, tracks whose pull failed in a way that can pass.

        A recorder is often started with the app's references while a publisher is still
        connecting: Cloudflare then answers ``not_found_track_error`` or
        ``empty_track_error`` for that track. It is asked for again (1 s, 2 s, 4 s ... at
        most every ``REPULL_BACKOFF_MAX`` s) for as long as the recording runs, and joins
        the timeline where it arrives; until then its cell is a reported gap.
        """
        delay = REPULL_FIRST
        while True:
            await asyncio.sleep(delay)
            subscriber = self._subscriber
            assert subscriber is not None
            waiting: dict[str, list[TrackRef]] = {}
            for ref, failure in subscriber.failed_tracks.items():
                if failure.can_pass:
                    waiting.setdefault(failure.participant.id, []).append(ref)
            if not waiting:
                delay = REPULL_FIRST
                continue
            for refs in waiting.values():
                first = subscriber.failed_tracks[refs[0]]
                participant, slot = first.participant, first.slot
                retry = participant.model_copy(update={"tracks": tuple(refs)})
                try:
                    failures = await subscriber.pull(retry, slot)
                except RealtimeError as exc:
                    log.info("recorder.repull_failed", participant=participant.id, error=str(exc))
                    continue
                log.info(
                    "recorder.tracks_repulled",
                    participant=participant.id,
                    pulled=len(refs) - len(failures),
                    still_missing=len(failures),
                )
            delay = min(2 * delay, REPULL_BACKOFF_MAX)

    async def _rebuild(self) -> None:
        """A new Cloudflare session pulling the same tracks; the recording goes on.

        The old path is probed between attempts: if it comes back first, it is kept.
        """
        old = self._subscriber
        assert old is not None
        began = time.monotonic()
        attempt = 0
        while not self._stop.is_set():
            if not old.failed.is_set() and await old.probe(answer_within=PROBE_INTERVAL):
                log.info("recorder.transport_recovered", after_s=round(time.monotonic() - began, 2))
                return
            new = self._new_subscriber()
            try:
                await new.open()
                for participant, slot in list(self._participants.values()):
                    await new.pull(participant, slot)
                await asyncio.wait_for(
                    new.connected.wait(), timeout=self.settings.realtime.request_timeout
                )
            except (RealtimeError, TimeoutError) as exc:
                await new.close()
                delay = min(REBUILD_BACKOFF_MAX, 0.25 * 2**attempt)
                attempt += 1
                log.warning("recorder.rebuild_failed", attempt=attempt, error=str(exc))
                await asyncio.sleep(delay)
                continue
            self._subscriber = new
            self._retired += old.tracks
            self.rebuilds += 1
            await old.close()
            log.info(
                "recorder.transport_rebuilt",
                after_s=round(time.monotonic() - began, 2),
                attempts=attempt + 1,
            )
            return

    def _prepare_spool(
        self, object_key: str, started_at: datetime
    ) -> tuple[Spool, Uploader, Mp4Writer]:
        """Disk work before the first frame: the spool, its draft manifest, the MP4 header."""
        rec = self.settings.recording
        spool = Spool.create(
            self.settings.storage.spool_dir,
            consultation_id=self.consultation_id,
            recording_id=self.recording_id,
            object_key=object_key,
        )
        spool.save_manifest_draft(self._manifest(started_at, None, None))
        uploader = open_uploader(self.settings.storage, spool)
        writer = Mp4Writer(
            spool.media_path,
            width=rec.width,
            height=rec.height,
            fps=rec.fps,
            video_bitrate=rec.video_bitrate,
            keyframe_seconds=rec.keyframe_seconds,
            audio_codec=rec.audio_codec,
            audio_bitrate=rec.audio_bitrate,
            speaker_titles=[slot.role for slot in self.slots],
            preset=rec.video_preset,
            encoder_threads=rec.encoder_threads,
            on_fragment=uploader.poke,
        )
        return spool, uploader, writer

    def _submit(self, slot: int, t: float, frame: Any) -> None:
        if self._pipeline is not None:
            self._pipeline.submit(slot, t, frame)

    def _slot_for(self, participant: Participant) -> int:
        for index, slot in enumerate(self.slots):
            if slot.participant_id == participant.id:
                return index
        taken = {slot for _, slot in self._participants.values()}
        for index, slot in enumerate(self.slots):
            if slot.role == participant.role and index not in taken and not slot.participant_id:
                return index
        raise ConfigError(
            f"no free cell for a {participant.role!r}: the layout is "
            f"{[s.role for s in self.slots]}; set recording.layout to include it"
        )

    async def _wait_for_stop(self) -> str:
        rec = self.settings.recording
        assert self._subscriber is not None and self._pipeline is not None
        pipeline = self._pipeline
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop, sig.name.lower())
        try:
            while not self._stop.is_set():
                now = pipeline.now()
                subscriber = self._subscriber
                last = subscriber.last_media()
                silent_for = time.time() - last if last else now
                if now >= rec.max_duration:
                    return "duration_limit"
                if silent_for >= rec.silence_timeout:
                    return "silence_timeout"
                connected = subscriber.connected.is_set()
                if subscriber.tracks and not connected and now >= rec.connect_timeout:
                    return "connect_timeout"
                if not pipeline.alive:
                    return "media_failed"
                if self._uploader is not None and self._uploader.status().disk_limit:
                    return "disk_limit"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stop.wait(), timeout=min(0.25, rec.max_duration - now)
                    )
            return self._stop_reason
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def _manifest(
        self, started_at: datetime, ended_at: datetime | None, media: MediaReport | None
    ) -> Manifest:
        rec = self.settings.recording
        tracks = self._retired + (self._subscriber.tracks if self._subscriber else [])
        return Manifest(
            consultation_id=self.consultation_id,
            recording_id=self.recording_id,
            participants=tuple(ParticipantEntry(id=p.id, role=p.role) for p in self._ever.values()),
            tracks=tuple(
                TrackEntry(
                    participant_id=t.participant.id, kind=t.kind, track_name=t.ref.track_name
                )
                for t in tracks
            ),
            started_at=started_at,
            ended_at=ended_at,
            duration_seconds=media.duration if media else None,
            video=VideoInfo(codec="h264", width=rec.width, height=rec.height, fps=rec.fps),
            audio=AudioInfo(codec=rec.audio_codec, sample_rate=48_000, channels=1),
            gaps=tuple(
                Gap(
                    participant_id=g.participant or None,
                    kind=g.kind,
                    start=round(g.start, 3),
                    end=round(g.end, 3),
                    reason=g.reason,
                )
                for g in (media.gaps if media else [])
            ),
            sync=self._sync_report(media),
        )

    def _sync_report(self, media: MediaReport | None) -> dict[str, Any]:
        """How each track was timed and what the media thread did (the manifest's ``sync``)."""
        subscriber = self._subscriber
        report: dict[str, Any] = {
            "clock": "wall clock from RTCP sender reports, else packet arrival",
            "rebuilds": self.rebuilds,
            "tracks": subscriber.track_status() if subscriber is not None else [],
            "failed_tracks": [f.report() for f in subscriber.failed_tracks.values()]
            if subscriber
            else [],
        }
        if media is None:
            return report
        video_s = media.video_frames / self.settings.recording.fps
        audio_s = media.audio_samples / 48_000
        report.update(
            duration_error_s=round(
                max(abs(video_s - media.duration), abs(audio_s - media.duration)), 4
            ),
            output_video_s=round(video_s, 4),
            output_audio_s=round(audio_s, 4),
            video_frames=media.video_frames,
            video_frames_dropped_in_queue=media.video_frames_dropped_in_queue,
            video_frames_repeated=media.video_frames_repeated,
            audio_frames_dropped_in_queue=media.audio_frames_dropped_in_queue,
            slots=media.slots,
        )
        return report


async def record(settings: Settings) -> RecordingResult:
    """Record one consultation with these settings (``bot record``)."""
    return await Recorder(settings).run()


def _failure_detail(subscriber: Subscriber) -> str:
    failures = subscriber.failures
    if not failures:
        return ""
    return ": " + "; ".join(
        f"{f.trackName}: [{f.errorCode}] {f.errorDescription or ''}".rstrip() for f in failures
    )


def _local_copy(settings: Settings, upload: UploadResult) -> Path | None:
    if settings.storage.backend == "local":
        return settings.storage.local_dir / upload.object_key
    return None


def _failed(recording_id: str, code: ExitCode, error: str) -> RecordingResult:
    log.error("recorder.failed", error=error, exit_code=int(code))
    return RecordingResult(code, recording_id, None, stop_reason="error", error=error)
