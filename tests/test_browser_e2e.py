"""Chromium publishers -> local SFU -> recorder -> MP4, measured with the test signal.

Two real browsers (clinician VP8, patient H.264) publish our barcode/flash/beep signal
through the SFU's call page; the recorder pulls their tracks and the recording is read
back. Mid-call the clinician's camera is scaled down to half size from page JS, as
Chrome's bandwidth adaptation would, and the recorder must keep decoding it.

A second call publishes with simulcast (a/b as Orange Meets does, and h/m/l from a 540p
camera) while the SFU loses 5% of what it sends the recorder, so NACKed packets come back
over RTX; mid-call the clinician's full-size layer stops and the SFU switches layers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import structlog
from testbed.analysis import (
    RecordingReport,
    abs_percentile,
    analyze_recording,
    audio_rms,
    detect_beeps,
)
from testbed.browser.driver import CHROMIUM, BrowserCall, BrowserParticipant, VideoSendStats
from testbed.browser.media_files import FakeMedia, write_fake_media
from testbed.stack import LocalCall, start_local_sfu

from bot.compose import compose
from bot.config import StorageSettings
from bot.exitcodes import ExitCode
from bot.realtime import RealtimeClient, SimulcastPreference, UpdateTrackObject
from bot.recording import Recorder, RecordingResult, record
from bot.recording.archive import tracks_prefix
from tests.e2e import ffprobe, recorder_settings, slots
from tests.faults import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

DURATION = 12.0
MEDIA_S = 24.0
"""Longer than setup plus recording, so the fake capture files never loop mid-test."""
SCALE_AFTER_FRAMES = 180
"""The clinician's camera is halved once its encoder has sent this many frames after the
recording started (about 6 s at 30 fps)."""
STATS_TIMEOUT_S = 15.0
AV_MATCH_S = 0.49
"""Chromium starts its fake microphone file and fake camera file independently, so a
browser's own audio and video start up to a few hundred ms apart (seen: -25 to +410 ms).
Each participant's flashes are therefore matched only to beeps in its own speaker track
(the pooled match of ``analyze_recording`` would pick the other participant's beep), up
to just under half the 1 s beep period apart, and sync is judged by its stability: the
median is that browser's skew, reported but not asserted."""
MAX_SPREAD_P95_MS = 150
"""On a machine running only this test the spread's p95 was 8-66 ms. With the 2 cores
saturated by other work (load average 12-19) Chromium's fake camera falls behind its own
timer, so its frame index drifts against wall time by 20-30 ms a second and the spread
reached 130-490 ms: that is the source slipping, not the recorder, and this check is then
meaningless. The tight sync checks use the synthetic participants, whose source is exact."""
MIN_MATCHED_BEEPS = 5


@dataclass
class BrowserRun:
    result: RecordingResult
    report: RecordingReport
    speaker_onsets: dict[str, list[float]]
    """Beep onsets (output seconds) in each speaker track, by role."""
    codecs: dict[str, str]
    sdp: dict[str, tuple[str, str]]
    """Per role: the browser's offer and the SFU's answer."""
    before: VideoSendStats
    after: VideoSendStats
    scaled_at_s: float
    """Output time at which the scaled-down picture was confirmed by the sender's stats."""


async def _until(
    probe: Callable[[], Awaitable[VideoSendStats]], ok: Callable[[VideoSendStats], bool]
) -> VideoSendStats:
    """Poll the page's sender stats until ``ok`` (getStats has no change event)."""
    deadline = time.monotonic() + STATS_TIMEOUT_S
    while True:
        stats = await probe()
        if ok(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"sender stats never satisfied the condition: {stats}")
        await asyncio.sleep(0.1)


async def _scale_mid_call(
    clinician: BrowserParticipant, recording: asyncio.Task[RecordingResult]
) -> tuple[VideoSendStats, VideoSendStats, float]:
    start = await clinician.video_stats()
    before = await _until(
        clinician.video_stats, lambda s: s.frames_sent >= start.frames_sent + SCALE_AFTER_FRAMES
    )
    await clinician.scale_video(2.0)
    after = await _until(clinician.video_stats, lambda s: s.width == before.width // 2)
    confirmed_wall = time.time()
    assert not recording.done(), "the recording ended before the resolution change"
    return before, after, confirmed_wall


async def _browser_call(output_dir: Path, media_dir: Path) -> BrowserRun:
    media: list[FakeMedia] = await asyncio.gather(
        *(asyncio.to_thread(write_fake_media, media_dir, n, MEDIA_S) for n in (1, 2))
    )
    call = await start_local_sfu()
    try:
        async with BrowserCall(call.base_url) as browsers:
            clinician, patient = await asyncio.gather(
                browsers.join("clinician", media[0], codec="vp8"),
                browsers.join("patient", media[1], codec="h264"),
            )
            settings = recorder_settings(
                call,
                output_dir,
                participants=(clinician.participant("c1"), patient.participant("p1")),
                max_duration=DURATION,
            )
            sdp = {
                "clinician": await clinician.negotiated_sdp(),
                "patient": await patient.negotiated_sdp(),
            }
            recording = asyncio.create_task(record(settings))
            before, after, scaled_wall = await _scale_mid_call(clinician, recording)
            result = await recording
    finally:
        await call.close()
    assert result.path is not None, result.error
    assert isinstance(result.started_at, datetime)
    report = await asyncio.to_thread(analyze_recording, result.path, slots(2))
    onsets = await asyncio.to_thread(_speaker_onsets, result.path)
    return BrowserRun(
        result=result,
        report=report,
        speaker_onsets=onsets,
        codecs={"clinician": clinician.video_codec, "patient": patient.video_codec},
        sdp=sdp,
        before=before,
        after=after,
        scaled_at_s=scaled_wall - result.started_at.timestamp(),
    )


def _speaker_onsets(path: Path) -> dict[str, list[float]]:
    """Beep onsets per speaker track (named by its handler), placed by frame pts."""
    onsets: dict[str, list[float]] = {}
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            name = stream.metadata.get("handler_name", "")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=48_000)
            pieces: list[tuple[int, np.ndarray]] = []
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                start = round(frame.pts * frame.time_base * 48_000)
                for out in resampler.resample(frame):
                    pieces.append((start, out.to_ndarray().reshape(-1)))
                    start += out.samples
            container.seek(0)
            origin = pieces[0][0]
            samples = np.zeros(max(s + len(p) for s, p in pieces) - origin, dtype=np.float32)
            for start, piece in pieces:
                samples[start - origin : start - origin + len(piece)] = piece
            onsets[name] = [(origin + o) / 48_000 for o in detect_beeps(samples)]
    return onsets


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserRun]:
    yield asyncio.run(
        _browser_call(tmp_path_factory.mktemp("rec"), tmp_path_factory.mktemp("media"))
    )


def test_browsers_publish_vp8_and_h264(run: BrowserRun) -> None:
    assert run.codecs == {"clinician": "VP8", "patient": "H264"}


def _section(sdp: str, kind: str) -> str:
    return sdp.split(f"m={kind} ")[1].split("\nm=", maxsplit=1)[0]


def _codecs(section: str) -> list[str]:
    return re.findall(r"a=rtpmap:\d+ ([\w-]+)/", section)


@pytest.mark.parametrize(("role", "codec"), [("clinician", "VP8"), ("patient", "H264")])
def test_sfu_answers_chromes_full_offer_with_only_what_it_forwards(
    run: BrowserRun, role: str, codec: str
) -> None:
    offer, answer = run.sdp[role]
    offered = _codecs(_section(offer, "video"))
    # Chrome offers far more than the SFU forwards (and aiortc knows) ...
    assert {"VP8", "H264", "rtx", "red", "ulpfec"} <= set(offered), offered
    assert "transport-wide-cc" in offer and "a=rtcp-fb:" in offer
    assert "a=simulcast" not in offer
    # ... and gets back exactly one codec per m-line (plus RTX for video).
    assert _codecs(_section(answer, "video")) == [codec, "rtx"]
    assert _codecs(_section(answer, "audio")) == ["opus"]
    if codec == "H264":
        fmtp = _section(answer, "video")
        assert "packetization-mode=1" in fmtp and "profile-level-id=42e01f" in fmtp


def test_recording_completes_as_a_standard_file(run: BrowserRun) -> None:
    assert run.result.exit_code == ExitCode.OK, run.result.error
    assert run.result.stop_reason == "duration_limit"
    assert run.result.path is not None
    info = ffprobe(run.result.path)
    assert [s["codec_name"] for s in info["streams"]] == ["h264", "aac", "aac", "aac"]
    assert abs(float(info["format"]["duration"]) - DURATION) < 0.5


def test_both_browsers_are_seen(run: BrowserRun) -> None:
    assert set(run.report.participants) == {1, 2}
    for participant in run.report.participants.values():
        # Frames are read from the barcode; allow for the first second of connection.
        assert participant.frames_seen > (DURATION - 3) * 25, participant.number
        # The capture file never looped (a loop would restart the frame index).
        assert participant.frame_indices[-1] < MEDIA_S * 30


def test_every_speaker_track_is_heard(run: BrowserRun) -> None:
    assert run.result.path is not None
    mix, clinician, patient = audio_rms(run.result.path)
    assert min(mix, clinician, patient) > 0.01, (mix, clinician, patient)


def test_av_offset_per_participant(run: BrowserRun) -> None:
    """Each browser's offset is its fake devices' start skew plus the recorder's error;
    the skew is constant, so the recorder's share is the spread around the median."""
    figures = {}
    for number, role in ((1, "clinician"), (2, "patient")):
        own = run.speaker_onsets[role]
        offsets = []
        for beep in run.report.participants[number].beeps:
            predicted = beep.k + beep.video_offset_s
            onset = min(own, key=lambda o: abs(o - predicted), default=None)
            if onset is not None and abs(onset - predicted) <= AV_MATCH_S:
                offsets.append(beep.video_offset_s - (onset - beep.k))
        assert len(offsets) >= MIN_MATCHED_BEEPS, (role, offsets)
        median = float(np.median(offsets))
        figures[role] = {
            "offsets_ms": [round(o * 1000) for o in offsets],
            "median_ms": round(median * 1000),
            "spread_p95_ms": round(abs_percentile([o - median for o in offsets], 95) * 1000),
            "abs_p95_ms": round(abs_percentile(offsets, 95) * 1000),
        }
    print(f"browser A/V offsets per participant: {figures}")
    for figure in figures.values():
        assert figure["spread_p95_ms"] < MAX_SPREAD_P95_MS, figures


def test_resolution_change_keeps_decoding(run: BrowserRun) -> None:
    assert (run.before.width, run.before.height) == (640, 360)
    assert (run.after.width, run.after.height) == (320, 180)
    clinician = run.report.participants[1]
    # Beeps whose +-0.5 s window lies wholly after the switch and inside the recording.
    later = [
        b
        for b in clinician.beeps
        if run.scaled_at_s + 0.5 < b.k + b.video_offset_s < DURATION - 0.5
    ]
    # Every second after the switch still shows the half-size picture's barcode, in at
    # least half of that second's output frames (the rest may be dropped under load).
    assert len(later) >= int(DURATION - run.scaled_at_s) - 2, (run.scaled_at_s, later)
    assert all(b.video_frames >= 15 for b in later), later


# --- simulcast through a lossy downlink ---------------------------------------------------

LOSS = 0.05
SWITCH_AFTER_S = 6.0
"""This far into the recording the SFU moves the clinician to its half-size layer, as
Cloudflare does when the subscriber's bandwidth estimate drops (here by ``tracks/update``
on the recorder's session, the way the SFU's own choice reaches the wire)."""


@dataclass
class SimulcastRun:
    result: RecordingResult
    report: RecordingReport
    manifest: dict[str, Any]
    logs: list[dict[str, Any]]
    switched_at_s: float


async def _switch_layer(call: LocalCall, recorder: Recorder, participant: str, rid: str) -> None:
    subscriber = recorder.subscriber
    assert subscriber is not None and subscriber.session_id is not None
    [track] = [
        t for t in subscriber.tracks if t.participant.id == participant and t.kind == "video"
    ]
    async with RealtimeClient(call.app_id, call.app_secret, base_url=call.base_url) as client:
        result = await client.update_tracks(
            subscriber.session_id,
            [UpdateTrackObject(mid=track.mid, simulcast=SimulcastPreference(preferredRid=rid))],
        )
    assert not result.tracks[0].failed, result.tracks


async def _simulcast_call(output_dir: Path, media_dir: Path) -> SimulcastRun:
    media = await asyncio.gather(
        *(asyncio.to_thread(write_fake_media, media_dir, n, MEDIA_S) for n in (1, 2))
    )
    call = await start_local_sfu()
    try:
        async with BrowserCall(call.base_url) as browsers:
            clinician, patient = await asyncio.gather(
                browsers.join("clinician", media[0], simulcast=("a", "b")),
                browsers.join("patient", media[1], simulcast=("h", "m", "l")),
            )
            await call.inject_fault({"action": "impair_downlink", "loss": LOSS})
            settings = recorder_settings(
                call,
                output_dir,
                participants=(clinician.participant("c1"), patient.participant("p1")),
                max_duration=DURATION,
            )
            recorder = Recorder(settings)
            with structlog.testing.capture_logs() as logs:
                recording = asyncio.create_task(recorder.run())
                await asyncio.wait_for(recorder.started.wait(), 60)
                pipeline = recorder.pipeline
                assert pipeline is not None
                await wait_until(lambda: pipeline.now() >= SWITCH_AFTER_S, 30, "mid-call")
                switched_at = pipeline.now()
                await _switch_layer(call, recorder, "c1", "b")
                result = await recording
    finally:
        await call.close()
    assert result.path is not None, result.error
    manifest = json.loads(result.path.with_name(result.path.name + ".manifest.json").read_text())
    report = await asyncio.to_thread(analyze_recording, result.path, slots(2), match_s=AV_MATCH_S)
    return SimulcastRun(result, report, manifest, logs, switched_at)


@pytest.fixture(scope="module")
def simulcast_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulcastRun]:
    yield asyncio.run(
        _simulcast_call(tmp_path_factory.mktemp("rec"), tmp_path_factory.mktemp("media"))
    )


def _video_track(run: SimulcastRun, participant: str) -> dict[str, Any]:
    return next(
        t
        for t in run.manifest["sync"]["tracks"]
        if t["participant"] == participant and t["kind"] == "video"
    )


def test_simulcast_the_recorder_gets_each_publishers_full_size_layer(
    simulcast_run: SimulcastRun,
) -> None:
    """``recording.simulcast_layer`` "a": the a/b publisher's "a"; the h/m/l publisher has
    no "a", so ``ridNotAvailable: asciibetical`` gives its next rid, "h" (full size)."""
    run = simulcast_run
    assert run.result.exit_code == ExitCode.OK, run.result.error
    assert _video_track(run, "c1")["sizes"][0][1:] == [640, 360]
    assert _video_track(run, "p1")["sizes"][0][1:] == [640, 360]
    assert [s[1:] for s in _video_track(run, "p1")["sizes"]] == [[640, 360]], "stays on h"
    refused = [e for e in run.logs if e["event"] == "subscriber.layer_not_set"]
    assert not refused, refused


def test_a_layer_switch_is_a_resolution_change_without_a_gap(simulcast_run: SimulcastRun) -> None:
    run = simulcast_run
    sizes = _video_track(run, "c1")["sizes"]
    print(f"[simulcast] clinician sizes {sizes}; switch asked at {run.switched_at_s:.2f} s")
    assert [s[1:] for s in sizes] == [[640, 360], [320, 180]], sizes
    assert run.switched_at_s < sizes[1][0] < run.switched_at_s + 1.0
    holes = [
        g
        for g in run.result.media.gaps
        if g.participant == "c1" and g.kind == "video" and g.start > 2.0
    ]
    assert not holes, holes
    clinician = run.report.participants[1]
    later = [b for b in clinician.beeps if b.k + b.video_offset_s > sizes[1][0] + 0.5]
    assert later and all(b.video_frames >= 15 for b in later), later


def test_retransmissions_over_rtx_keep_lip_sync_under_loss(simulcast_run: SimulcastRun) -> None:
    run = simulcast_run
    for participant in ("c1", "p1"):
        assert _video_track(run, participant)["rtx_packets"] > 0
    assert not [e for e in run.logs if e["event"] == "clock.ssrc_changed"]
    figures = _av_spreads(run.report)
    print(f"[simulcast, {LOSS:.0%} loss] A/V per participant: {figures}")
    for figure in figures.values():
        assert figure["spread_p95_ms"] < MAX_SPREAD_P95_MS, figures


def _av_spreads(report: RecordingReport) -> dict[int, dict[str, Any]]:
    """Each participant's A/V offsets and their spread's p95 around that browser's own
    median (its skew between fake camera and microphone is not the recorder's)."""
    figures = {}
    for number, participant in sorted(report.participants.items()):
        offsets = participant.av_offsets()
        assert len(offsets) >= MIN_MATCHED_BEEPS, offsets
        median = float(np.median(offsets))
        figures[number] = {
            "offsets_ms": [round(o * 1000) for o in offsets],
            "spread_p95_ms": round(abs_percentile([o - median for o in offsets], 95) * 1000),
        }
    return figures


async def test_a_tracks_only_recording_under_loss_composes_in_lip_sync(tmp_path: Path) -> None:
    """Tracks mode reads its socket in batches (``subscriber.READ_BATCH_SECONDS``): NACKs
    go out and retransmissions are read up to an interval later. The production
    configuration, Chromium publishing through 5% downlink loss, then ``bot compose``."""
    media = await asyncio.gather(
        *(asyncio.to_thread(write_fake_media, tmp_path, n, MEDIA_S) for n in (1, 2))
    )
    call = await start_local_sfu()
    try:
        async with BrowserCall(call.base_url) as browsers:
            clinician, patient = await asyncio.gather(
                browsers.join("clinician", media[0]), browsers.join("patient", media[1])
            )
            await call.inject_fault({"action": "impair_downlink", "loss": LOSS})
            settings = recorder_settings(
                call,
                tmp_path / "out",
                participants=(clinician.participant("c1"), patient.participant("p1")),
                max_duration=DURATION,
                mode="tracks",
            )
            with structlog.testing.capture_logs() as logs:
                result = await record(settings)
    finally:
        await call.close()
    assert result.exit_code == ExitCode.OK and result.object_key is not None, result.error
    reading = [e["batched"] for e in logs if e["event"] == "subscriber.rtp_reading"]
    assert reading == [True], reading
    elsewhere = StorageSettings(spool_dir=tmp_path / "c", local_dir=tmp_path / "c")
    done = await compose(
        settings.model_copy(update={"storage": elsewhere}),
        folder=tmp_path / "out" / "verified" / tracks_prefix(result.object_key),
    )
    path = tmp_path / "c" / done.upload.object_key
    report = await asyncio.to_thread(analyze_recording, path, slots(2), match_s=AV_MATCH_S)
    figures = _av_spreads(report)
    print(f"[tracks only, {LOSS:.0%} loss, composed] A/V per participant: {figures}")
    for figure in figures.values():
        assert figure["spread_p95_ms"] < MAX_SPREAD_P95_MS, figures
