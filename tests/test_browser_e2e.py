"""Chromium publishers -> local SFU -> recorder -> MP4, measured with the test signal.

Two real browsers (clinician VP8, patient H.264) publish our barcode/flash/beep signal
through the SFU's call page; the recorder pulls their tracks and the recording is read
back. Mid-call the clinician's camera is scaled down to half size from page JS, as
Chrome's bandwidth adaptation would, and the recorder must keep decoding it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from bot.exitcodes import ExitCode
from bot.recorder import RecordingResult, record
from bot.testbed.analysis import RecordingReport, abs_percentile, analyze_recording, audio_rms
from bot.testbed.browser.driver import CHROMIUM, BrowserCall, BrowserParticipant, VideoSendStats
from bot.testbed.browser.media_files import FakeMedia, write_fake_media
from bot.testbed.stack import start_local_sfu
from tests.e2e import ffprobe, recorder_settings, slots

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
AV_MATCH_S = 0.45
"""Chromium starts its fake microphone file and fake camera file independently, so a
browser's own audio and video start up to a few hundred ms apart (seen: 30-350 ms): beeps
are matched to flashes that far apart, and sync is judged by its stability (below)."""


@dataclass
class BrowserRun:
    result: RecordingResult
    report: RecordingReport
    codecs: dict[str, str]
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
            recording = asyncio.create_task(record(settings))
            before, after, scaled_wall = await _scale_mid_call(clinician, recording)
            result = await recording
    finally:
        await call.close()
    assert result.path is not None, result.error
    assert isinstance(result.started_at, datetime)
    report = await asyncio.to_thread(analyze_recording, result.path, slots(2), match_s=AV_MATCH_S)
    return BrowserRun(
        result=result,
        report=report,
        codecs={"clinician": clinician.video_codec, "patient": patient.video_codec},
        before=before,
        after=after,
        scaled_at_s=scaled_wall - result.started_at.timestamp(),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserRun]:
    yield asyncio.run(
        _browser_call(tmp_path_factory.mktemp("rec"), tmp_path_factory.mktemp("media"))
    )


def test_browsers_publish_vp8_and_h264(run: BrowserRun) -> None:
    assert run.codecs == {"clinician": "VP8", "patient": "H264"}


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
    for number, participant in sorted(run.report.participants.items()):
        offsets = participant.av_offsets()
        assert len(offsets) >= DURATION - 4, (number, len(offsets))
        median = float(np.median(offsets))
        figures[number] = {
            "median_ms": round(median * 1000),
            "spread_p95_ms": round(abs_percentile([o - median for o in offsets], 95) * 1000),
            "abs_p95_ms": round(abs_percentile(offsets, 95) * 1000),
        }
    print(f"browser A/V offsets per participant: {figures}")
    for figure in figures.values():
        assert figure["spread_p95_ms"] < 40, figures
        assert abs(figure["median_ms"]) < 400, figures


def test_resolution_change_keeps_decoding(run: BrowserRun) -> None:
    assert (run.before.width, run.before.height) == (640, 360)
    assert (run.after.width, run.after.height) == (320, 180)
    clinician = run.report.participants[1]
    later = [b for b in clinician.beeps if b.k + b.video_offset_s > run.scaled_at_s + 0.5]
    # Every second after the switch still shows the half-size picture's barcode.
    assert len(later) >= int(DURATION - run.scaled_at_s) - 2, (run.scaled_at_s, later)
    assert all(b.video_frames >= 20 for b in later), later
