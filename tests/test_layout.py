"""Layouts that use the frame: the grid chosen for the participants' aspect, crop-to-fill,
the speaker layout and its switches (issue #15, item 1)."""

import math
import time
from itertools import combinations
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from bot.config import RecordingSettings
from bot.inspect.scan import Scan
from bot.manifest import LayoutRecord, Manifest
from bot.media.compositor import Compositor
from bot.media.gaps import GapTracker
from bot.media.layout import (
    Fit,
    Layout,
    LayoutSpec,
    Rect,
    SpeakerSelector,
    choose_grid,
    grid,
    grid_cells,
    shown_area,
    speaker_cells,
)
from bot.media.pipeline import MediaPipeline
from bot.media.report import SAMPLE_RATE, SlotInfo
from bot.media.writer import Mp4Writer
from bot.recording.manifest_builder import layout_record
from bot.timeline import Timeline

FRAME = (1280, 720)


def picture(width: int, height: int, value: int = 200) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((height, width, 3), value, np.uint8), format="rgb24")


def banded(width: int, height: int) -> av.VideoFrame:
    """Grey with a white top and bottom eighth: what ``cover`` crops off a 4:3 picture
    in a 16:9 cell."""
    rgb = np.full((height, width, 3), 120, np.uint8)
    rgb[: height // 8] = rgb[-(height // 8) :] = 255
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray").astype(int)


def assert_well_placed(cells: list[Rect], width: int, height: int) -> None:
    for r in cells:
        assert r.x % 2 == r.y % 2 == r.width % 2 == r.height % 2 == 0, r
        assert r.x >= 0 and r.y >= 0 and r.x + r.width <= width and r.y + r.height <= height
    for a, b in combinations(cells, 2):
        assert not a.overlaps(b), (a, b)


@pytest.mark.parametrize("aspect", [(16, 9), (4, 3)])
@pytest.mark.parametrize("count", range(1, 7))
def test_the_grid_shows_the_most_picture_for_the_aspect(
    count: int, aspect: tuple[int, int]
) -> None:
    cells = grid_cells(count, *FRAME, aspect)
    assert len(cells) == count
    assert_well_placed(cells, *FRAME)
    for cell in cells:  # shaped to the aspect, within rounding to even pixels
        assert abs(cell.width / cell.height - aspect[0] / aspect[1]) < 0.02
    shown = sum(c.width * c.height for c in cells)
    every = [shown_area(count, (c, math.ceil(count / c)), *FRAME, aspect) for c in range(1, 9)]
    assert shown >= 0.99 * max(every)


def test_the_grid_choices_at_720p() -> None:
    """16:9 participants keep the old grid (so ``bot inspect`` without a manifest finds
    them); two side by side fill the width; 4:3 participants fit more picture in 2x2."""
    assert [choose_grid(n, *FRAME, (16, 9)) for n in range(1, 7)] == [
        (1, 1), (2, 1), (2, 2), (2, 2), (3, 2), (3, 2),
    ]  # fmt: skip
    assert grid_cells(2, *FRAME, (16, 9)) == [Rect(0, 180, 640, 360), Rect(640, 180, 640, 360)]
    assert grid_cells(3, *FRAME, (4, 3))[0] == Rect(80, 0, 480, 360)
    for n in range(1, 7):  # each picture inside the share of the frame inspect looks in
        for cell, share in zip(grid_cells(n, *FRAME, (16, 9)), grid(n, *FRAME), strict=True):
            assert share.x <= cell.x and cell.x + cell.width <= share.x + share.width
            assert share.y <= cell.y and cell.y + cell.height <= share.y + share.height


@pytest.mark.parametrize("frame", [FRAME, (720, 1280)])
@pytest.mark.parametrize("count", range(2, 7))
def test_speaker_cells_put_the_speaker_large_and_the_others_in_a_strip(
    count: int, frame: tuple[int, int]
) -> None:
    for speaker in range(count):
        cells = speaker_cells(count, *frame, (16, 9), speaker)
        assert_well_placed(cells, *frame)
        large = cells[speaker]
        assert all(large.width > 2 * c.width for i, c in enumerate(cells) if i != speaker)
    # the others keep their order in the strip whoever speaks
    a_speaks, b_speaks = (speaker_cells(3, *FRAME, (16, 9), s) for s in (0, 1))
    assert a_speaks[1] == b_speaks[0] and a_speaks[2] == b_speaks[2]


def test_a_640x360_participant_fills_its_half_of_a_720p_frame() -> None:
    comp = Compositor(*FRAME, 30)
    for slot, rect in enumerate(grid_cells(2, *FRAME, (16, 9))):
        comp.add_cell(rect, GapTracker(f"p{slot}", "video"))
        comp.push(slot, 0.0, picture(640, 360))
    y = luma(comp.compose(0.0))
    for half in (y[:, :640], y[:, 640:]):
        lit_columns = (half > 100).any(axis=0).sum()
        assert lit_columns >= 0.9 * 640
        assert (half > 100).sum() >= 0.99 * 640 * 360  # no bars beyond the aspect's


def test_cover_crops_to_fill_the_cell_and_contain_shows_all() -> None:
    cell = Rect(0, 0, 640, 360)
    shown = {}
    fits: tuple[Fit, ...] = ("contain", "cover")
    for fit in fits:
        comp = Compositor(640, 360, 30, fit)
        comp.add_cell(cell, GapTracker("p", "video"))
        comp.push(0, 0.0, banded(640, 480))  # 4:3 into a 16:9 cell
        shown[fit] = luma(comp.compose(0.0))
    cover, contain = shown["cover"], shown["contain"]
    assert (cover > 60).all(), "cover: no bar anywhere in the cell"
    assert (cover[20:-20] < 150).all(), "cover: the white bands are cropped off"
    assert (contain[:, :70] < 30).all() and (contain[:, -70:] < 30).all(), "contain: pillars"
    assert (contain[2:20, 100:540] > 200).all(), "contain: the whole picture, bands too"


def test_cover_of_odd_shapes_stays_in_the_cell() -> None:
    comp = Compositor(1280, 720, 30, "cover")
    comp.add_cell(Rect(640, 180, 640, 360), GapTracker("p", "video"))
    for i, (w, h) in enumerate([(360, 640), (1920, 1080), (320, 240), (1000, 200)]):
        comp.push(0, i / 30, picture(w, h))
        y = luma(comp.compose(i / 30))
        assert (y[180:540, 640:] > 100).all()
        assert (y[:180] < 30).all() and (y[540:] < 30).all() and (y[:, :640] < 30).all()


@pytest.mark.parametrize("fit", ["contain", "cover"])
def test_a_resolution_or_aspect_change_keeps_the_cell(fit: Fit) -> None:
    cell = Rect(640, 180, 640, 360)
    comp = Compositor(*FRAME, 30, fit)
    comp.add_cell(cell, GapTracker("p", "video"))
    outside = np.ones(FRAME[::-1], bool)
    outside[cell.y : cell.y + cell.height, cell.x : cell.x + cell.width] = False
    sizes = [(640, 360), (320, 180), (1280, 720), (480, 360), (360, 640), (640, 360)]
    for i, (w, h) in enumerate(sizes):
        comp.push(0, i / 30, picture(w, h))
        y = luma(comp.compose(i / 30))
        assert (y[outside] < 30).all(), f"{w}x{h} drew outside its cell"
        if w * 9 == h * 16:  # the expected aspect: the whole cell, at every resolution
            assert (y[~outside] > 100).all(), f"{w}x{h} did not fill its cell"


def voices(levels: list[float], seconds: float = 1024 / SAMPLE_RATE) -> list[np.ndarray]:
    """One chunk per voice, a tone at each RMS level."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * 200 * t) * math.sqrt(2)
    return [(tone * level).astype(np.float32) for level in levels]


def run_selector(script: list[tuple[float, list[float]]]) -> list[tuple[float, int]]:
    """Feed ``(seconds, levels)`` stretches chunk by chunk; the switches (start, slot)."""
    selector = SpeakerSelector(len(script[0][1]))
    chunk = 1024 / SAMPLE_RATE
    t, switches = 0.0, []
    for seconds, levels in script:
        for _ in range(round(seconds / chunk)):
            switched = selector.hear(t, voices(levels))
            if switched is not None:
                switches.append((t, switched))
            t += chunk
    return switches


def test_the_speaker_switches_once_after_holding_the_floor() -> None:
    loud, quiet = 0.1, 0.001
    switches = run_selector([(2.0, [loud, quiet]), (2.0, [quiet, loud])])
    assert len(switches) == 1 and switches[0][1] == 1
    assert 2.0 + 1.5 <= switches[0][0] <= 2.0 + 1.5 + 0.5


def test_blips_silence_and_crosstalk_do_not_switch() -> None:
    loud, quiet = 0.1, 0.001
    blips = [(1.0, [loud, quiet]), (0.6, [quiet, loud])] * 5  # "yes", "mm-hm"
    assert run_selector(blips) == []
    assert run_selector([(1.0, [loud, quiet]), (5.0, [0.0, 0.005])]) == []  # room noise
    assert run_selector([(5.0, [loud, loud * 1.5])]) == []  # both at once: no clear one
    # the first participant shown large is slot 0: the loudest from the start gets it
    assert [s for _, s in run_selector([(2.0, [quiet, quiet, loud])])] == [2]


def speaker_pipeline(path: Path, seconds: float) -> MediaPipeline:
    """Two participants, speaker layout, started ``seconds`` late so it runs at once."""
    writer = Mp4Writer(
        path,
        width=320,
        height=180,
        fps=30,
        video_bitrate=300_000,
        keyframe_seconds=1.0,
        audio_codec="aac",
        audio_bitrate=64_000,
        speaker_titles=["clinician", "patient"],
    )
    return MediaPipeline(
        writer,
        [SlotInfo("doc-1", "clinician"), SlotInfo("pat-1", "patient")],
        width=320,
        height=180,
        fps=30,
        timeline=Timeline(time.time() - seconds - 2.0),
        latency=0.05,
        layout=LayoutSpec("speaker"),
    )


def s16(samples: np.ndarray) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.round(samples * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = SAMPLE_RATE
    return frame


def test_speaker_switches_reach_the_manifest(tmp_path: Path) -> None:
    pipeline = speaker_pipeline(tmp_path / "speaker.mp4", 5.0)
    tone = voices([0.2], 0.02)[0]
    for n in range(250):  # 5 s of 20-ms frames: the clinician for 2 s, then the patient
        speaking = 0 if n < 100 else 1
        for slot in (0, 1):
            pipeline.submit(slot, n * 0.02, s16(tone if slot == speaking else tone * 0))
    for n in range(150):
        for slot in (0, 1):
            pipeline.submit(slot, n / 30, picture(320, 180, 60 + 100 * slot))
    pipeline.start()
    report = pipeline.finish(5.0)
    assert report.layout is not None
    [(at, participant)] = report.layout.switches
    # The patient took the floor at 2 s and held it 1.5 s; the picture follows from the
    # next frame composed (within a frame in real time; here, catching up, within a
    # second, as the thread composes a second of pictures before the sound).
    assert participant == "pat-1" and 3.5 <= at <= 4.8
    record = layout_record(report.layout)
    assert record.mode == "speaker" and record.fit == "contain" and record.aspect == "16:9"
    assert [(c.x, c.y, c.width, c.height) for c in record.cells] == [
        (0, 22, 240, 134),
        (240, 68, 78, 44),
    ]
    assert record.switches[0].participant_id == "pat-1"
    manifest = Manifest(
        consultation_id="c1", recording_id="r1", started_at="2025-01-01T00:00:00Z", layout=record
    )
    assert Manifest.from_json(manifest.to_json()).layout == record


def test_a_switch_moves_the_pictures_at_once_without_a_black_frame() -> None:
    layout = Layout(LayoutSpec("speaker"), 2, *FRAME)
    comp = Compositor(*FRAME, 30)
    for slot, rect in enumerate(layout.cells(0)):
        comp.add_cell(rect, GapTracker(f"p{slot}", "video"))
        comp.push(slot, 0.0, picture(640, 360, 60 + 120 * slot))
    before = luma(comp.compose(0.0))
    comp.arrange(layout.cells(1))
    # no new frame, and the thread behind (only repeating): the last pictures, moved
    after = luma(comp.compose(1 / 30, repeat=True))
    large, small = layout.cells(0)
    for y, (first, second) in ((before, (60, 180)), (after, (180, 60))):
        big = y[large.y : large.y + large.height, large.x : large.x + large.width]
        strip = y[small.y : small.y + small.height, small.x : small.x + small.width]
        assert abs(np.median(big) - first) < 12 and abs(np.median(strip) - second) < 12
        shown = (y > 30).sum()
        assert shown == large.width * large.height + small.width * small.height


def test_the_layout_record_is_strict() -> None:
    good = {"mode": "speaker", "fit": "cover", "aspect": "4:3", "cells": [], "switches": []}
    LayoutRecord.model_validate(good)
    for bad in (
        {**good, "mode": "mosaic"},
        {**good, "aspect": "wide"},
        {**good, "extra": 1},
        {**good, "switches": [{"at": 1.0, "participant_id": "Jane Doe"}]},
        {**good, "cells": [{"x": -2, "y": 0, "width": 2, "height": 2}]},
    ):
        with pytest.raises(ValidationError):
            LayoutRecord.model_validate(bad)


def test_settings_choose_the_layout() -> None:
    settings = RecordingSettings(layout_mode="speaker", fit="cover", participant_aspect="4:3")
    spec = LayoutSpec.of(settings)
    assert spec == LayoutSpec("speaker", "cover", (4, 3))
    assert LayoutSpec.of(RecordingSettings()) == LayoutSpec("grid", "contain", (16, 9))
    assert Layout(spec, 2, *FRAME).switches and not Layout(LayoutSpec(), 2, *FRAME).switches
    with pytest.raises(ValidationError):
        RecordingSettings(participant_aspect="16x9")


def test_inspect_takes_the_cells_from_the_manifests_layout(tmp_path: Path) -> None:
    cells = speaker_cells(2, *FRAME, (16, 9), 0)
    record = LayoutRecord.model_validate(
        {
            "mode": "speaker",
            "fit": "contain",
            "aspect": "16:9",
            "cells": [{"x": c.x, "y": c.y, "width": c.width, "height": c.height} for c in cells],
        }
    )
    manifest = Manifest(
        consultation_id="c1", recording_id="r1", started_at="2025-01-01T00:00:00Z", layout=record
    )
    scan = Scan(tmp_path / "none.mp4", manifest)
    scan.width, scan.height = FRAME
    scan._start_layouts()  # the step that runs once the video stream's size is known
    assert scan.rects == cells
    assert scan.cells_found == "2 cells, from the manifest's layout (speaker)"
