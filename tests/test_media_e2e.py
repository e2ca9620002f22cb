"""Consultation-grade media, measured from the decoded file (issue: lip sync, timeline).

Publishers run in-process (``SyntheticParticipant``) so a test controls when each joins,
leaves, mutes or changes resolution; the SFU is the local one, the recorder the real one.
Sources run at 25 fps into a 30 fps output so the frame-grid phase sweeps and the video
placement can be measured to well under a frame (see ``testbed.analysis``).
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from testbed.analysis import abs_percentile, analyze_recording
from testbed.sfu import LocalSfu

from bot.config import (
    Participant,
    RealtimeSettings,
    RecordingSettings,
    Settings,
    StorageSettings,
    TrackRef,
)
from bot.media.gaps import Gap
from bot.realtime import RealtimeClient, SessionDescription, TrackObject
from bot.recording import Recorder, RecordingResult
from bot.synthetic.participant import SyntheticParticipant
from bot.synthetic.signal import render_i420
from tests.e2e import ffprobe, slots

pytestmark = pytest.mark.slow


def settings_for(sfu: LocalSfu, tmp_path: Path, **recording: object) -> Settings:
    return Settings(
        realtime=RealtimeSettings(
            base_url=sfu.base_url,
            app_id="test-app",
            app_secret="test-secret-0123456789abcdef",
            ice_servers=(),
        ),
        recording=RecordingSettings(consultation_id="c-media", **recording),  # type: ignore[arg-type]
        storage=StorageSettings(spool_dir=tmp_path / "spool", local_dir=tmp_path / "out"),
    )


def as_participant(pid: str, source: SyntheticParticipant) -> Participant:
    refs = source.track_refs
    return Participant(
        id=pid,
        role=source.role,
        tracks=(TrackRef.parse(refs["audio"]), TrackRef.parse(refs["video"])),
    )


def timeline_seconds(recorder: Recorder, loop_instant: float) -> float:
    """A loop-clock instant on the recorder's timeline."""
    assert recorder.timeline is not None
    wall = time.time() - (asyncio.get_running_loop().time() - loop_instant)
    return recorder.timeline.at(wall)


def gaps_of(result: RecordingResult, participant: str, kind: str) -> list[Gap]:
    return [g for g in result.media.gaps if g.participant == participant and g.kind == kind]


async def record_two_at_25_fps(
    sfu: LocalSfu, tmp_path: Path, **recording: object
) -> tuple[RecordingResult, list[float]]:
    """Ten seconds of a clinician and a patient publishing at 25 fps in-process; the
    result, and where each source's clock started on the recording's timeline."""
    async with RealtimeClient(
        "test-app", "test-secret-0123456789abcdef", base_url=sfu.base_url
    ) as client:
        sources = [
            SyntheticParticipant(client, number=1, role="clinician", fps=25),
            SyntheticParticipant(client, number=2, role="patient", fps=25),
        ]
        for source in sources:
            await source.start()
        participants = (as_participant("c1", sources[0]), as_participant("p1", sources[1]))
        recorder = Recorder(
            settings_for(sfu, tmp_path, participants=participants, max_duration=10.0, **recording)
        )
        run = asyncio.create_task(recorder.run())
        await recorder.started.wait()
        starts = [timeline_seconds(recorder, s.clock_start) for s in sources]
        result = await run
        for source in sources:
            await source.stop()
    return result, starts


@pytest.mark.parametrize(("sender_reports", "limit"), [(True, 0.020), (False, 0.060)])
async def test_lip_sync_alignment_and_duration(
    sfu_factory, tmp_path: Path, sender_reports: bool, limit: float
) -> None:
    sfu = await sfu_factory(sender_reports=sender_reports)
    result, starts = await record_two_at_25_fps(sfu, tmp_path)

    assert result.upload is not None, result.error
    assert result.path is not None
    info = ffprobe(result.path)
    assert abs(float(info["format"]["duration"]) - result.media.duration) < 0.1

    report = analyze_recording(result.path, slots(2), src_fps=25)
    placements = {}
    for number, start in zip((1, 2), starts, strict=True):
        participant = report.participants[number]
        offsets = participant.av_offsets()
        assert len(offsets) >= 6, f"participant {number}: too few beeps measured"
        p95 = abs_percentile(offsets, 95)
        print(
            f"sender_reports={sender_reports} participant {number}: A/V p95 {p95 * 1000:.1f} ms, "
            f"offsets {[round(o * 1000, 1) for o in offsets]}"
        )
        assert p95 <= limit
        assert participant.missing_frames() == [], "no source frame dropped"
        audio = [b.audio_offset_s for b in participant.beeps if b.audio_offset_s is not None]
        placements[number] = float(np.median(audio)) - start
    # Each participant's sound lands where it was sent (the file's AAC priming shifts
    # everything by ~21 ms), and the two participants agree with each other.
    print(f"placement after capture: {[round(p * 1000, 1) for p in placements.values()]} ms")
    assert abs(placements[1] - placements[2]) < 0.040
    assert all(-0.010 < p < 0.080 for p in placements.values())

    # No output frame dropped or duplicated: one frame per 1/30 s, every one.
    with av.open(str(result.path)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]
    steps = np.diff(pts[1:])
    assert set(steps.tolist()) == {steps[0]}
    # Every tick before the end has its frame, and the file holds all of them.
    assert len(pts) == result.media.video_frames == math.ceil(result.media.duration * 30)


async def test_late_join_leave_and_return_resolution_changes_and_mute(
    sfu_factory, tmp_path: Path
) -> None:
    sfu = await sfu_factory()
    async with RealtimeClient(
        "test-app", "test-secret-0123456789abcdef", base_url=sfu.base_url
    ) as client:
        clinician = SyntheticParticipant(
            client,
            number=1,
            role="clinician",
            fps=25,
            resolution_schedule=[(0.0, 640, 360), (3.0, 1280, 720), (6.0, 320, 180)],
        )
        await clinician.start()
        recorder = Recorder(
            settings_for(
                sfu,
                tmp_path,
                participants=(as_participant("c1", clinician),),
                layout=("clinician", "patient"),
                max_duration=19.0,
            )
        )
        run = asyncio.create_task(recorder.run())
        await recorder.started.wait()

        async def at(second: float) -> None:
            assert recorder.timeline is not None
            await asyncio.sleep(max(0.0, second - recorder.timeline.now()))

        await at(5.0)  # the patient joins 5 s late, and mutes 3-8 s into its own stream
        patient = SyntheticParticipant(
            client, number=2, role="patient", fps=25, audio_mutes=[(3.0, 8.0)]
        )
        await patient.start()
        await recorder.add_participant(as_participant("p1", patient))
        await at(9.0)  # the clinician leaves ...
        await clinician.stop()
        await recorder.drop_participant("c1")
        await at(14.0)  # ... and comes back 5 s later under a new session id
        returned = SyntheticParticipant(client, number=1, role="clinician", fps=25)
        await returned.start()
        assert returned.session_id != clinician.session_id
        await recorder.add_participant(as_participant("c1", returned))
        result = await run
        await patient.stop()
        await returned.stop()

    assert result.upload is not None, result.error
    for g in result.media.gaps:
        print(g.as_dict())
    [late] = [g for g in gaps_of(result, "p1", "video") if g.start < 1.0]
    assert 4.5 < late.end < 6.5 and late.reason.startswith("no media yet")
    [left_video] = [g for g in gaps_of(result, "c1", "video") if g.start > 8.0]
    [left_audio] = [g for g in gaps_of(result, "c1", "audio") if g.start > 8.0]
    for gap in (left_video, left_audio):
        assert 8.8 < gap.start < 9.8 and 4.0 < gap.duration < 6.5, gap
    mutes = [g for g in gaps_of(result, "p1", "audio") if g.start > 6.0]
    assert len(mutes) == 1 and 4.0 < mutes[0].duration < 6.0, mutes
    assert not [g for g in gaps_of(result, "p1", "video") if g.start > 6.0]

    assert result.path is not None
    report = analyze_recording(result.path, slots(2), src_fps=25)
    clinician_seen = report.participants[1]
    # Frames from every resolution (0-3 s: 360p, 3-6 s: 720p, 6-9 s: 180p) and after return.
    indices = clinician_seen.frame_indices
    assert any(i < 60 for i in indices) and any(90 < i < 140 for i in indices)
    assert any(170 < i < 220 for i in indices)
    assert report.participants[2].frames_seen > 200


class _SignalTrack(VideoStreamTrack):
    """Our test picture, encoded by aiortc itself (a second camera, a screen share)."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self._number = number
        self._index = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(
            render_i420(self._number, self._index, 320, 180, 30), format="yuv420p"
        )
        frame.pts, frame.time_base = pts, time_base
        self._index += 1
        return frame


async def test_two_video_tracks_on_one_session_without_ssrc_lines(
    sfu_factory, tmp_path: Path
) -> None:
    sfu = await sfu_factory(ssrc_in_sdp=False)
    async with RealtimeClient(
        "test-app", "test-secret-0123456789abcdef", base_url=sfu.base_url
    ) as client:
        publisher = RTCPeerConnection()
        for number in (1, 2):
            publisher.addTransceiver(_SignalTrack(number), direction="sendonly")
        session = (await client.new_session()).sessionId
        await publisher.setLocalDescription(await publisher.createOffer())
        names = ["camera", "screen"]
        published = await client.new_tracks(
            session,
            [
                TrackObject(location="local", mid=t.mid, trackName=n)
                for t, n in zip(publisher.getTransceivers(), names, strict=True)
            ],
            SessionDescription(type="offer", sdp=publisher.localDescription.sdp),
        )
        assert published.sessionDescription is not None
        await publisher.setRemoteDescription(
            RTCSessionDescription(published.sessionDescription.sdp, "answer")
        )
        participants = tuple(
            Participant(id=f"v{i}", role=role, tracks=(TrackRef(session_id=session, track_name=n),))
            for i, (role, n) in enumerate(zip(("camera", "screen"), names, strict=True))
        )
        settings = settings_for(sfu, tmp_path, participants=participants, max_duration=5.0)
        pulled_offer: list[str] = []

        class OfferKeepingClient(RealtimeClient):
            async def pull_tracks(self, session_id, tracks, answer):  # type: ignore[no-untyped-def]
                async def keep(offer: SessionDescription) -> SessionDescription:
                    pulled_offer.append(offer.sdp)
                    return await answer(offer)

                return await super().pull_tracks(session_id, tracks, keep)

        realtime = settings.realtime
        keeping = OfferKeepingClient(
            realtime.app_id, realtime.app_secret.get_secret_value(), base_url=realtime.base_url
        )
        result = await Recorder(settings, client=keeping).run()
        await publisher.close()

    assert pulled_offer and all("a=ssrc" not in sdp for sdp in pulled_offer)
    assert result.path is not None, result.error
    report = analyze_recording(result.path, slots(2))
    assert set(report.participants) == {1, 2}
    assert min(p.frames_seen for p in report.participants.values()) > 60
