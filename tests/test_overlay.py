"""Labels and the clock burned into the picture, read back from decoded H.264 frames.

The reader matches each character cell against the overlay's own glyphs (the nearest by
differing pixels), so a test passes only if the text survives x264 at the recorder's
settings legibly enough for a machine, pixel by pixel.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import av
import numpy as np
import numpy.typing as npt
import pytest

from bot.config import ConfigError, RecordingSettings, load_settings
from bot.media.layout import Rect, grid, grid_cells
from bot.media.overlay import (
    ADVANCE,
    GLYPH_HEIGHT,
    GLYPHS,
    PAD,
    Captions,
    Overlay,
    box_height,
    scale_for,
)
from bot.media.pipeline import MediaPipeline
from bot.media.report import SAMPLE_RATE, SlotInfo
from bot.media.withholding import CONSENT_WITHDRAWN, Withholding
from bot.media.writer import Mp4Writer
from bot.timeline import Timeline

ORIGIN = 1_796_176_687.6
"""2026-12-02 01:58:07.6 UTC: the second changes 0.4 s into the recording."""

Luma = npt.NDArray[Any]


def read(luma: Luma, x: int, y: int, scale: int, count: int) -> str:
    """``count`` characters whose first cell's top-left is at ``x, y``."""
    text = []
    for i in range(count):
        left = x + i * ADVANCE * scale
        cell = luma[y : y + GLYPH_HEIGHT * scale, left : left + ADVANCE * scale]
        cells = cell.reshape(GLYPH_HEIGHT, scale, ADVANCE, scale).mean(axis=(1, 3)) > 128
        text.append(min(GLYPHS, key=lambda c: int(np.count_nonzero(GLYPHS[c] != cells))))
    return "".join(text)


def read_clock(luma: Luma, height: int, count: int = 23) -> str:
    scale = scale_for(height)
    return read(luma, PAD * scale, PAD * scale, scale, count)


def read_label(luma: Luma, rect: Rect, height: int, count: int) -> str:
    scale = scale_for(height)
    top = rect.y + rect.height - box_height(scale) + PAD * scale
    return read(luma, rect.x + PAD * scale, top, scale, count)


def clock(wall: float, zone: str = "UTC") -> str:
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    return datetime.fromtimestamp(math.floor(wall), tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def lumas(path: Path) -> list[Luma]:
    """The Y plane of every decoded frame, in presentation order."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray() for f in container.decode(video=0)]
    return [f[: f.shape[0] * 2 // 3] for f in frames]


def writer(path: Path, width: int, height: int, fps: int, bitrate: int) -> Mp4Writer:
    return Mp4Writer(
        path,
        width=width,
        height=height,
        fps=fps,
        video_bitrate=bitrate,
        keyframe_seconds=1.0,
        audio_codec="aac",
        audio_bitrate=64_000,
        speaker_titles=["clinician", "patient"],
    )


def busy_picture(frame: av.VideoFrame, n: int) -> None:
    """A moving, colourful picture with camera noise under the captions. (Much more noise,
    +-20 on every pixel of every frame at 360p, starves x264 so far that it skips the
    clock's macroblocks until the next keyframe.)"""
    rng = np.random.default_rng(n)
    for index, plane in enumerate(frame.planes):
        view = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        ramp = (np.arange(plane.width) * 3 + n * 7) % 200 + 28
        noise = rng.integers(-10, 11, (plane.height, plane.width))
        base = ramp if index == 0 else np.full(plane.width, 90 + 40 * index)
        view[:, : plane.width] = np.clip(base + noise, 16, 235)


@pytest.mark.parametrize(
    ("width", "height", "bitrate"), [(640, 360, 400_000), (1280, 720, 1_500_000)]
)
def test_the_clock_reads_back_from_h264_frames(
    tmp_path: Path, width: int, height: int, bitrate: int
) -> None:
    fps = 10
    path = tmp_path / "clock.mp4"
    out = writer(path, width, height, fps, bitrate)
    overlay = Overlay(
        width, height, [(Rect(0, 0, width, height), "clinician")], Captions(), origin_wall=ORIGIN
    )
    frame = av.VideoFrame(width, height, "yuv420p")
    for n in range(25):
        overlay.erase()
        busy_picture(frame, n)
        overlay.draw(frame, n / fps, [None])
        out.write_video(frame)
    out.close()
    decoded = lumas(path)
    assert len(decoded) == 25
    for n, luma in enumerate(decoded):
        assert read_clock(luma, height) == clock(ORIGIN + n / fps), f"frame {n}"
    assert read_clock(decoded[0], height) == "2026-12-02 01:58:07 UTC"
    assert read_clock(decoded[4], height) == "2026-12-02 01:58:08 UTC"
    assert read_label(decoded[0], Rect(0, 0, width, height), height, 9) == "clinician"


def test_zone_and_consultation_id_and_erase_leave_the_picture_as_it_was() -> None:
    frame = av.VideoFrame(320, 180, "yuv420p")
    busy_picture(frame, 1)
    before = frame.to_ndarray().copy()
    cells = list(zip(grid(2, 320, 180), ["clinician", "patient"], strict=True))
    captions = Captions({"patient": "Patient"}, "Europe/Berlin", "c-123")
    overlay = Overlay(320, 180, cells, captions, origin_wall=ORIGIN)
    overlay.draw(frame, 0.0, [None, CONSENT_WITHDRAWN])
    luma = frame.to_ndarray()[:180]
    assert read_clock(luma, 180, 30) == "2026-12-02 02:58:07 CET  c-123"
    assert read_label(luma, cells[0][0], 180, 9) == "clinician"
    assert read_label(luma, cells[1][0], 180, 25) == "Patient - consent withdrawn"[:25]
    overlay.erase()
    assert np.array_equal(frame.to_ndarray(), before)


def test_captions_follow_the_settings() -> None:
    assert Captions.of(RecordingSettings(overlay=False, consultation_id="c-1")) is None
    assert Captions.of(RecordingSettings(consultation_id="c-1")) == Captions({}, "UTC", None)
    shown = RecordingSettings(
        consultation_id="c-1", show_consultation_id=True, labels={"patient": "Patient"}
    )
    assert Captions.of(shown) == Captions({"patient": "Patient"}, "UTC", "c-1")
    env = {"BOT_RECORDING_LABELS": "clinician=GP (lead),patient=Patient"}
    assert load_settings(env=env).recording.labels == {
        "clinician": "GP (lead)",
        "patient": "Patient",
    }
    with pytest.raises(ConfigError, match="unknown time zone"):
        load_settings(env={"BOT_RECORDING_CLOCK_ZONE": "Mars/Olympus"})
    with pytest.raises(ConfigError, match="labels"):
        load_settings(env={"BOT_RECORDING_LABELS": "patient=Zoë"})  # not in the font


def gray(value: int) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((36, 64, 3), value, np.uint8), format="rgb24")


def tone(amplitude: int = 8000) -> av.AudioFrame:
    pcm = (np.sin(np.arange(960) * 0.1) * amplitude).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(
        np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = SAMPLE_RATE
    return frame


def test_a_pipeline_run_shows_the_timeline_clock_and_each_cells_state(tmp_path: Path) -> None:
    """The recording starts at ``ORIGIN``; the media thread starts 2.5 s late, so it
    repeats pictures to catch up and then runs in real time: the clock is right both
    ways. Paused 1-2 s, the patient's consent withdrawn at 3 s, the clinician silent
    after 1 s (muted from 3 s)."""
    fps, width, height = 15, 640, 360
    start = time.monotonic()
    timeline = Timeline(ORIGIN, wall_clock=lambda: ORIGIN + 2.5 + time.monotonic() - start)
    withholding = Withholding()
    withholding.pause(1.0)
    withholding.resume(2.0)
    withholding.set_consent("p1", False, 3.0)
    path = tmp_path / "run.mp4"
    pipeline = MediaPipeline(
        writer(path, width, height, fps, 400_000),
        [SlotInfo("c1", "clinician"), SlotInfo("p1", "patient")],
        width=width,
        height=height,
        fps=fps,
        timeline=timeline,
        latency=0.05,
        withholding=withholding,
        captions=Captions({"patient": "Patient (P1)"}),
    )
    for i in range(4 * 25):
        pipeline.submit(0, i / 25, gray(100 + i))
        pipeline.submit(1, i / 25, gray(200 - i))
    for i in range(4 * 50):
        if i < 50:
            pipeline.submit(0, i * 0.02, tone())
        pipeline.submit(1, i * 0.02, tone())
    pipeline.start()
    report = pipeline.finish(4.0)
    assert 0 < report.video_frames_repeated < report.video_frames == 60
    decoded = lumas(path)
    for n in range(0, 60, 3):
        wall = datetime.strptime(read_clock(decoded[n], height), "%Y-%m-%d %H:%M:%S %Z")
        assert abs(wall.replace(tzinfo=UTC).timestamp() - (ORIGIN + n / fps)) < 1.0
        assert read_clock(decoded[n], height) == clock(ORIGIN + n / fps), f"frame {n}"
    # The labels sit at the foot of each cell as laid out (16:9 cells, side by side).
    clinician, patient = grid_cells(2, width, height, (16, 9))
    expected = {
        0.5: ("clinician", "Patient (P1)"),
        1.5: ("clinician - paused", "Patient (P1) - paused"),
        2.5: ("clinician", "Patient (P1)"),  # the pause's longer box is gone, not left over
        3.5: ("clinician - muted", "Patient (P1) - consent withdrawn"),
    }
    for t, (left, right) in expected.items():
        luma = decoded[round(t * fps)]
        assert read_label(luma, clinician, height, len(left)) == left, t
        assert read_label(luma, patient, height, len(right)) == right, t
    # The pause's longer label is gone once it ends, not left over beside the short one.
    after_pause = decoded[round(2.5 * fps)]
    paused = "clinician - paused"
    assert read_label(after_pause, clinician, height, len(paused)) != paused
