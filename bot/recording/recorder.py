"""One consultation, from session to verified object: the recorder's lifecycle.

Order matters: the Cloudflare session is created first and the configured tracks pulled
(a wrong secret or no pullable track fails before any file exists); then the spool, the
uploader and the media pipeline start. Participants can join, leave and come back while
it records (``add_participant``/``drop_participant``); the roster keeps each in one slot.
The supervisor keeps the transport alive, the stop policy says when to end; whatever the
reason, the pipeline is finished so the MP4 is complete, then uploaded and verified.

Its collaborators (the API client, the object store, the wall clock) are constructor
arguments: production builds them from the settings, tests hand in their own. It owns
the recording's audit trail (``audit``: the control API and side services write into it
while it records) and closes it when done: sealed into the manifest and stored beside
the object, or left beside the spool for ``bot recover``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from bot.config import Participant, Settings
from bot.custody.audit import AuditLog
from bot.custody.signing import load_signer
from bot.e2ee.frames import FrameDecryptor
from bot.e2ee.session import E2eeSession
from bot.exitcodes import ExitCode
from bot.manifest import Manifest
from bot.media.report import MediaReport
from bot.media.withholding import Withholding
from bot.realtime import RealtimeClient, RealtimeError, TrackResult
from bot.recording.archive import TrackArchive, archive_record_key, store_archive_record
from bot.recording.manifest_builder import TransportFacts, build_manifest, e2ee_record
from bot.recording.privacy import PrivacyControls
from bot.recording.result import RecordingResult, exit_code_of, failed, failure_summary
from bot.recording.roster import Roster
from bot.recording.status import (
    ParticipantStatus,
    RecorderStatus,
)
from bot.recording.stop_policy import (
    StopPolicy,
    StopSignals,
    failure_of,
    stop_on_signals,
    wait_for_stop,
)
from bot.recording.supervisor import TransportSupervisor, subscriber_supervisor
from bot.rtc.aiortc_compat import AiortcCompatError, check_private_api
from bot.rtc.subscriber import Subscriber
from bot.storage import ObjectStore, StorageError, UploadStatus, local_path, object_key_for
from bot.storage.stores import open_store
from bot.tasks import stop_task
from bot.timeline import Timeline

if TYPE_CHECKING:
    from bot.media.pipeline import MediaPipeline
    from bot.recording.output import Output

log = structlog.get_logger("bot.recorder")

DEFAULT_LAYOUT = ("clinician", "patient")
STOP_CHECK_INTERVAL = 0.25


class Recorder:
    """Records one consultation; its public methods are what the control API calls."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: RealtimeClient | None = None,
        store: ObjectStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        rec = settings.recording
        self.settings = settings
        self.consultation_id = rec.required_consultation_id()
        self.recording_id = uuid.uuid4().hex
        self.roster = Roster(
            rec.layout or tuple(p.role for p in rec.participants) or DEFAULT_LAYOUT
        )
        self._signer = load_signer(settings.custody)
        self.audit = AuditLog.beside_spool(
            settings.storage.spool_dir, self.consultation_id, self.recording_id
        )
        self.started = asyncio.Event()
        self.timeline: Timeline | None = None
        """The recording's timeline, once running."""
        self._client = client or RealtimeClient.from_settings(settings.realtime)
        self._store = store
        self._wall_clock = wall_clock
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._policy = StopPolicy(rec, settings.e2ee.join_timeout)
        self._supervisor: TransportSupervisor[Subscriber] | None = None
        self._pipeline: MediaPipeline | None = None
        """The live composite (None in ``tracks`` mode)."""
        self._output: Output | None = None
        self._archive: TrackArchive | None = None
        """The tracks as they arrived (``tracks`` and ``both`` modes)."""
        self._packets_lost: dict[str, int] = {}
        self._withholding = Withholding(
            require_consent=rec.require_consent, unreadable=self._unreadable
        )
        self.privacy = PrivacyControls(self._withholding, self._now)
        self.e2ee = E2eeSession(FrameDecryptor(), clock=wall_clock)
        """The recorder's membership in an encrypted call (driven by the control API); its
        ``frames`` opens every received frame, or keeps it from the decoders."""

    # -- live control ------------------------------------------------------------------

    async def add_participant(self, participant: Participant) -> list[TrackResult]:
        """Pull a participant's tracks into its role's slot; returns per-track failures.

        A returning participant (same id, perhaps a new session) gets its old slot back.
        Frames that arrive before the media pipeline exists (the first pulls, a few
        milliseconds) are dropped.
        """
        supervisor = self._running()
        if participant.id in self.roster:
            await self.drop_participant(participant.id)
        slot = self.roster.place(participant)
        if self._pipeline is not None:
            self._pipeline.assign(slot, self.roster.slots[slot])
        failures = await supervisor.current.pull(participant, slot)
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
        supervisor = self._running()
        slot = self.roster.remove(participant_id)
        if self._pipeline is not None:
            self._pipeline.cut(slot, self._now())
        await supervisor.current.drop(participant_id)
        log.info("recorder.participant_dropped", participant=participant_id)

    def stop(self, reason: str = "stop_requested") -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def subscriber(self) -> Subscriber | None:
        """The live transport (replaced when rebuilt), for the selftest's ICE facts and
        tests; everyone else reads ``status()``."""
        return self._supervisor.current if self._supervisor else None

    @property
    def pipeline(self) -> MediaPipeline | None:
        return self._pipeline

    def status(self) -> RecorderStatus:
        return RecorderStatus.of(
            self.consultation_id,
            self.recording_id,
            started=self.started.is_set(),
            stopping=self.stopping,
            supervisor=self._supervisor,
            elapsed=self._now(),
            pipeline=self._pipeline,
            participants=tuple(
                ParticipantStatus(p.id, p.role, slot, self._withholding.consent(p.id))
                for p, slot in self.roster.present()
            ),
            paused=self._withholding.paused,
            packets_lost=self._packets_lost,
            upload=self._upload_status(),
            e2ee=self.e2ee.status() if self.e2ee.member else None,
        )

    async def refresh(self) -> None:
        """Gather what only async APIs report (packet loss), for the next ``status()``."""
        if self._supervisor is not None:
            self._packets_lost.update(await self._supervisor.current.packets_lost())

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> RecordingResult:
        """Record until a stop condition; the result always says what happened."""
        structlog.contextvars.bind_contextvars(
            consultation_id=self.consultation_id, recording_id=self.recording_id
        )
        try:
            try:
                await check_private_api()  # before any network call
            except AiortcCompatError as exc:
                result = failed(self.recording_id, ExitCode.FAILURE, str(exc))
            else:
                async with self._client:
                    result = await self._run()
            if result.upload is None:
                self.audit.record(
                    "recording.failed", exit_code=int(result.exit_code), error=result.error or ""
                )
        finally:
            await self.audit.close()
        if result.upload is not None:
            self.audit.path.unlink()  # stored beside the object, sealed into its manifest
        return result

    async def _run(self) -> RecordingResult:
        timeline = self.timeline = Timeline.starting_now(self._wall_clock)
        started_at = datetime.fromtimestamp(timeline.origin_wall, UTC)
        object_key = object_key_for(
            self.settings.storage,
            consultation_id=self.consultation_id,
            recording_id=self.recording_id,
            started_at=started_at,
        )
        mode = self.settings.recording.mode
        if mode != "composite":
            self._archive = TrackArchive(
                self.settings,
                self._store,
                consultation_id=self.consultation_id,
                recording_id=self.recording_id,
                object_key=object_key,
                origin=started_at,
                withholding=self._withholding,
                signer=self._signer,
                loop=asyncio.get_running_loop(),
            )
        supervisor = self._supervisor = subscriber_supervisor(
            self.settings,
            self._client,
            self.roster,
            timeline,
            submit=self._submit,
            stopping=self._stop.is_set,
            open_frame=self.e2ee.frames.open,
            archiver=self._archive,
        )
        refused = await self._join()
        if refused is not None:
            await supervisor.current.close()
            if self._archive is not None:
                await self._archive.finish()  # whatever a track wrote before the refusal
            return refused
        if mode != "tracks":
            await self._start_composite(object_key, started_at, timeline)
        self.started.set()
        log.info("recorder.started", slots=self.roster.roles, object_key=object_key, mode=mode)
        result = RecordingResult(
            ExitCode.OK, self.recording_id, object_key=object_key, started_at=started_at
        )
        await self._record_until_stopped(result, supervisor)
        await self._store_result(result)
        return result

    async def _join(self) -> RecordingResult | None:
        """Open the session and pull the configured tracks; a failure result if that is
        all there can be (before any file exists)."""
        assert self._supervisor is not None
        transport = self._supervisor.current
        try:
            await transport.open()
            for participant in self.settings.recording.participants:
                await self.add_participant(participant)
        except RealtimeError as exc:
            return failed(self.recording_id, exit_code_of(exc), str(exc))
        if self.settings.recording.participants and not transport.tracks:
            return failed(
                self.recording_id,
                ExitCode.REALTIME,
                "no track could be pulled; check the SESSION_ID/TRACK references"
                + failure_summary(transport.failures),
            )
        return None

    async def _record_until_stopped(
        self, result: RecordingResult, supervisor: TransportSupervisor[Subscriber]
    ) -> None:
        watchdog = asyncio.create_task(supervisor.watch(), name="transport-watchdog")
        repull = asyncio.create_task(supervisor.repull(), name="repull-tracks")
        try:
            result.stop_reason = await self._wait_for_stop()
            failure = failure_of(result.stop_reason)
            if failure is not None:
                result.exit_code, result.error = failure
        except RealtimeError as exc:
            result.exit_code = ExitCode.REALTIME
            result.error = str(exc)
            result.stop_reason = "realtime_error"
        finally:
            end = self._now()
            await stop_task(watchdog)
            await stop_task(repull)
            # Frames up to ``end`` still in flight arrive while the pipeline finishes.
            pipeline = self._pipeline
            result.media = (
                await asyncio.to_thread(pipeline.finish, end)
                if pipeline is not None
                else MediaReport(duration=end)
            )
            result.failed_tracks = [f.report() for f in supervisor.current.failed_tracks.values()]
            await supervisor.current.close()
            result.ended_at = datetime.now(UTC)
            self.audit.record(
                "recording.stopped",
                stop_reason=result.stop_reason,
                duration_s=round(result.media.duration, 3),
                gaps=len(result.media.gaps),
            )

    async def _store_result(self, result: RecordingResult) -> None:
        assert result.started_at is not None
        archive = await self._archive.finish() if self._archive is not None else []
        manifest = self._manifest(result.started_at, result.ended_at, result.media).model_copy(
            update={"archive": tuple(archive)}
        )
        output = self._output
        if self._archive is not None and self._archive.unstored:
            result.exit_code = ExitCode.STORAGE
            result.error = (
                f"{self._archive.unstored} track file(s) could not be stored; they are in "
                f"{self.settings.storage.spool_dir}: run `bot recover`"
            )
        try:
            if output is None:
                # Under the tracks' prefix: a composite made later takes ``object_key``.
                assert result.object_key is not None
                store = self._store or open_store(self.settings.storage)
                key = archive_record_key(result.object_key)
                result.upload = await asyncio.to_thread(
                    store_archive_record, store, manifest, key, self.audit, self._signer
                )
            else:
                result.upload = await asyncio.to_thread(
                    output.uploader.finish, manifest, output.evidence.seal
                )
                result.path = local_path(self.settings.storage, result.upload.object_key)
        except StorageError as exc:
            result.exit_code = ExitCode.STORAGE
            where = output.spool.directory if output else self.settings.storage.spool_dir
            result.error = f"{exc}; the recording is complete in {where}: run `bot recover`"
            result.path = output.spool.media_path if output else None
        result.log_finished()

    async def _start_composite(
        self, object_key: str, started_at: datetime, timeline: Timeline
    ) -> None:
        """The spool, the uploader and the media thread of the live composite."""
        # Imported here, not with the module: a recording kept only as tracks never
        # loads the compositor, mixer and encoders (numpy among them, about 20 MB).
        from bot.recording.output import open_output, open_pipeline

        output = self._output = await asyncio.to_thread(
            open_output,
            self.settings,
            self._store,
            consultation_id=self.consultation_id,
            recording_id=self.recording_id,
            object_key=object_key,
            draft=self._manifest(started_at, None, None),
            speaker_titles=self.roster.roles,
            audit=self.audit,
            signer=self._signer,
        )
        self.audit.record("recording.object", object_key=object_key)
        pipeline = self._pipeline = open_pipeline(
            self.settings.recording, output.writer, self.roster.slots, timeline, self._withholding
        )
        output.uploader.start()
        pipeline.start()

    def _upload_status(self) -> UploadStatus | None:
        """The composite's upload, or with tracks only every track's as one."""
        if self._output is not None:
            return self._output.uploader.status()
        return self._archive.upload_status() if self._archive is not None else None

    def _unreadable(self, participant_id: str) -> bool:
        supervisor = self._supervisor
        return (
            supervisor is not None
            and participant_id in supervisor.current.unreadable_participants()
        )

    def _now(self) -> float:
        return self.timeline.now() if self.timeline is not None else 0.0

    def _submit(
        self, slot: int, t: float, frame: Any, replace: Callable[[], float | None] | None
    ) -> None:
        if self._pipeline is not None:
            self._pipeline.submit(slot, t, frame, replace)

    def _running(self) -> TransportSupervisor[Subscriber]:
        assert self._supervisor is not None, "the recorder is not running"
        return self._supervisor

    async def _wait_for_stop(self) -> str:
        with stop_on_signals(self.stop):
            return await wait_for_stop(
                self._policy,
                self._observe,
                self._stop,
                lambda: self._stop_reason,
                interval=STOP_CHECK_INTERVAL,
            )

    def _observe(self) -> StopSignals:
        assert self._supervisor is not None
        upload = self._upload_status()
        return StopSignals.of(
            self._supervisor.current,
            self._now(),
            media_alive=self._pipeline.alive if self._pipeline is not None else True,
            upload=upload,
            wall_clock=self._wall_clock,
            unreadable_for_s=self.e2ee.frames.unreadable_for(),
        )

    def _manifest(
        self, started_at: datetime, ended_at: datetime | None, media: MediaReport | None
    ) -> Manifest:
        return build_manifest(
            self.settings.recording,
            consultation_id=self.consultation_id,
            recording_id=self.recording_id,
            roster=self.roster,
            transport=TransportFacts.of(self._supervisor),
            started_at=started_at,
            ended_at=ended_at,
            media=media,
            consent=self._withholding.consent_changes(),
            e2ee=e2ee_record(self.e2ee),
        )


async def record(settings: Settings) -> RecordingResult:
    """Record one consultation with these settings (``bot record``)."""
    return await Recorder(settings).run()
