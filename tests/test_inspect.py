"""``bot inspect``: the text report and the timeline picture of a recording.

A file made here with known dark, frozen and silent stretches checks what decoding finds;
the demo's recording (two synthetic participants, recorded for real, with its manifest)
checks the report, the picture's size and that every lane was drawn, and, copied away from
its manifest, that its cells and A/V offsets are still found. Grids of 2 to 4 cells made
here through the compositor, without a manifest, check the same from the picture alone.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from bot.cli import main
from bot.exitcodes import ExitCode
from bot.inspect.report import inspect_recording
from bot.inspect.timeline_png import (
    MEDIA,
    build_lanes,
    default_png_path,
    expected_size,
    gap_color,
    render_timeline,
)
from bot.media.compositor import Compositor
from bot.media.gaps import GapTracker
from bot.media.layout import grid
from bot.media.mixer import Mixer
from bot.media.writer import Mp4Writer
from bot.synthetic.signal import SAMPLE_RATE, SAMPLES_PER_FRAME, render_audio, render_i420

_W, _H, _FPS, _RATE = 320, 180, 30, 48000
_SECONDS = 4.0


def _picture(n: int) -> NDArray[np.uint8]:
    """A bright gradient with a bar that moves every frame (so it is never frozen)."""
    img = np.zeros((_H, _W, 3), dtype=np.uint8)
    img[:] = np.linspace(60, 200, _W, dtype=np.uint8)[None, :, None]
    x = (n * 7) % (_W - 20)
    img[:, x : x + 20] = 255
    return img


@pytest.fixture(scope="module")
def known_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Video: moving 0-1 s, black 1-2 s, frozen 2-3 s, moving 3-4 s.
    Audio: a tone except 1.5-2.5 s."""
    path = tmp_path_factory.mktemp("inspect") / "known.mp4"
    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as out:
        video = out.add_stream("libx264", rate=_FPS)
        video.width, video.height, video.pix_fmt = _W, _H, "yuv420p"
        video.options = {"preset": "ultrafast", "qp": "12", "g": "30"}
        audio = out.add_stream("aac", rate=_RATE)
        audio.layout = "mono"
        audio.metadata["handler_name"] = "clinician"
        for n in range(round(_SECONDS * _FPS)):
            t = n / _FPS
            if 1.0 <= t < 2.0:
                img = np.zeros((_H, _W, 3), dtype=np.uint8)
            elif 2.0 <= t < 3.0:
                img = _picture(round(2.0 * _FPS))
            else:
                img = _picture(n)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = n
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        total = round(_SECONDS * _RATE)
        t = np.arange(total) / _RATE
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        tone[(t >= 1.5) & (t < 2.5)] = 0.0
        for j in range(total // 1024):
            chunk = tone[j * 1024 : (j + 1) * 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts = _RATE, j * 1024
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def test_decoding_finds_dark_frozen_and_silent_stretches(known_file: Path) -> None:
    ins = inspect_recording(known_file)
    assert ins.manifest is None
    assert (ins.width, ins.height) == (_W, _H)
    assert ins.fragments >= 4
    (cell,) = ins.cells
    (dark,) = cell.dark
    assert dark.start == pytest.approx(1.0, abs=0.05)
    assert dark.end == pytest.approx(2.0, abs=0.05)
    (frozen,) = cell.still
    assert frozen.start == pytest.approx(2.0, abs=0.1)
    assert frozen.end == pytest.approx(3.0, abs=0.05)
    (stream,) = [s for s in ins.streams if s.kind == "audio"]
    assert stream.title == "clinician"
    (silent,) = stream.silent
    assert silent.start == pytest.approx(1.5, abs=0.06)
    assert silent.end == pytest.approx(2.5, abs=0.06)
    assert all(not s.holes for s in ins.streams)
    assert ins.av_offsets == []
    report = ins.report()
    assert "dark 1.0" in report and "manifest: none beside the file" in report


def test_a_file_without_manifest_gets_cell_and_audio_lanes(
    known_file: Path, tmp_path: Path
) -> None:
    ins = inspect_recording(known_file)
    lanes = build_lanes(ins)
    assert [lane.label for lane in lanes] == ["video cell 1", "audio clinician"]
    timeline = render_timeline(ins, tmp_path / "t.png")
    assert (timeline.width, timeline.height) == expected_size(2, av_panel=False)


def test_not_a_recording_is_a_media_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not an mp4 at all" * 100)
    assert main(["inspect", str(bogus)]) == ExitCode.MEDIA
    assert "not a readable recording" in capsys.readouterr().err
    assert not default_png_path(bogus).exists()


@pytest.fixture(scope="module")
def demo_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testbed.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    assert asyncio.run(run_demo(duration=5.0, output_dir=out, storage="local")) == 0
    (path,) = out.rglob("*.mp4")
    return path


def _rgb(hex_color: str) -> tuple[int, int, int]:
    value = int(hex_color.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


@pytest.mark.slow
def test_demo_recording_report_and_timeline(
    demo_recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(demo_recording)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "found by decoding:",
        "participants: clinician-1 (clinician), patient-1 (patient)",
        "upload parts (1):",
        "synthetic barcode found",
        "timeline: ",
    ):
        assert expected in out
    png = default_png_path(demo_recording)
    ins = inspect_recording(demo_recording)
    lanes = build_lanes(ins)
    assert [lane.label for lane in lanes] == [
        "clinician clinician-1 · video",
        "clinician clinician-1 · audio",
        "patient patient-1 · video",
        "patient patient-1 · audio",
        "mixed audio",
        "upload parts",
    ]
    assert ins.av_offsets, "the demo's participants beep and flash: offsets are measurable"
    with Image.open(png) as image:
        assert image.size == expected_size(len(lanes), av_panel=True)
        pixels = np.asarray(image.convert("RGB"))
    # Redraw to learn where each lane is, then check each lane's pixels in the saved PNG.
    timeline = render_timeline(ins, png.with_suffix(".again.png"))
    assert (timeline.width, timeline.height) == (image.size[0], image.size[1])
    media = np.array(_rgb(MEDIA))
    for lane, box in zip(lanes, timeline.lanes, strict=True):
        assert lane.label == box.label
        pixels_in = pixels[box.top : box.bottom, box.left : box.right].reshape(-1, 3).astype(int)
        drawn = np.any(np.abs(pixels_in - 255) > 30, axis=1).mean()
        assert drawn > 0.002, f"lane {box.label!r} is empty"
        if lane.media:
            assert np.all(np.abs(pixels_in - media) < 8, axis=1).mean() > 0.02, box.label
        # Every gap the manifest lists that is wider than a few pixels shows in its colour.
        for gap in lane.gaps:
            if gap.length > 0.02 * ins.duration:
                color = np.array(_rgb(gap_color(gap.label)))
                assert np.all(np.abs(pixels_in - color) < 8, axis=1).any(), (box.label, gap)


@pytest.mark.slow
def test_demo_recording_manifest_elsewhere(demo_recording: Path, tmp_path: Path) -> None:
    moved = tmp_path / "copy.mp4"
    shutil.copyfile(demo_recording, moved)
    assert inspect_recording(moved).manifest is None
    manifest = demo_recording.with_name(demo_recording.name + ".manifest.json")
    png = tmp_path / "pictures" / "t.png"
    assert main(["inspect", str(moved), "--manifest", str(manifest), "--png", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size[0] == expected_size(1, av_panel=False)[0]


@pytest.mark.slow
def test_demo_recording_without_its_manifest(
    demo_recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file on its own (copied away from its manifest): both participants' cells,
    named by their speaker tracks, and the A/V offset of each."""
    alone = tmp_path / "alone.mp4"
    shutil.copyfile(demo_recording, alone)
    assert main(["inspect", str(alone), "--no-png"]) == 0
    out = capsys.readouterr().out
    assert "2 cells, found by the synthetic barcodes in the picture" in out
    assert "manifest: none beside the file" in out
    ins = inspect_recording(alone)
    assert [c.label for c in ins.cells] == ["cell 1 (clinician)", "cell 2 (patient)"]
    assert {s.participant for s in ins.av_offsets} == {
        "participant 1 in cell 1 (clinician)",
        "participant 2 in cell 2 (patient)",
    }
    for name in ("participant 1 in cell 1 (clinician)", "participant 2 in cell 2 (patient)"):
        assert f"  {name}: " in out and "beeps, median" in out


_ROLES = ("clinician", "patient", "interpreter", "relative")


def _record_grid(path: Path, count: int, *, barcodes: bool, speakers: bool = True) -> None:
    """``count`` synthetic participants (or plain moving pictures, without barcodes),
    3 s at 640x360 through the recorder's compositor, mixer and writer (its media thread
    without the wait for real time): the grid, the mix and (unless not ``speakers``) a
    speaker track per cell, and no manifest."""
    width, height, fps, seconds = 640, 360, 30, 3.0
    roles = list(_ROLES[:count])
    writer = Mp4Writer(
        path,
        width=width,
        height=height,
        fps=fps,
        video_bitrate=800_000,
        keyframe_seconds=1.0,
        audio_codec="aac",
        audio_bitrate=64_000,
        speaker_titles=roles if speakers else [],
    )
    compositor, mixer = Compositor(width, height, fps), Mixer()
    for slot, rect in enumerate(grid(count, width, height)):
        compositor.add_cell(rect, GapTracker(roles[slot], "video"))
        mixer.add_voice(GapTracker(roles[slot], "audio"))
        for n in range(round(seconds * fps)):
            if barcodes:
                planes = render_i420(slot + 1, n, 320, 180, fps)
                frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            else:
                frame = av.VideoFrame.from_ndarray(_picture(n)[::2, ::2].copy(), format="rgb24")
            compositor.push(slot, n / fps, frame)
        for n in range(round(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)):
            pcm = render_audio(slot + 1, n * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME)
            audio = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            audio.sample_rate = SAMPLE_RATE
            mixer.push(slot, n * SAMPLES_PER_FRAME / SAMPLE_RATE, audio)
    for n in range(round(seconds * fps)):
        writer.write_video(compositor.compose(n / fps))
    while mixer.cursor < seconds * SAMPLE_RATE:
        mix, voices = mixer.pull(writer.audio_frame_size)
        for track, samples in enumerate([mix, *voices] if speakers else [mix]):
            writer.write_audio(track, samples)
    writer.close()


@pytest.mark.parametrize(("count", "speakers"), [(2, True), (3, True), (4, True), (3, False)])
def test_without_a_manifest_the_cells_are_found_by_their_barcodes(
    tmp_path: Path, count: int, speakers: bool
) -> None:
    """Each grid found from the picture, a 3-cell one also without speaker tracks to
    count (a 2x2 grid with one cell empty: the fewer cells win the tie)."""
    path = tmp_path / f"grid{count}.mp4"
    _record_grid(path, count, barcodes=True, speakers=speakers)
    ins = inspect_recording(path)
    assert ins.manifest is None
    assert ins.cells_found == f"{count} cells, found by the synthetic barcodes in the picture"
    roles = list(_ROLES[:count]) if speakers else [None] * count
    assert [c.role for c in ins.cells] == roles
    names = {s.participant for s in ins.av_offsets}
    assert names == {f"participant {n} in {c.label}" for n, c in enumerate(ins.cells, start=1)}
    assert all(abs(s.offset) < 0.05 for s in ins.av_offsets), ins.av_offsets


def test_without_barcodes_the_cells_follow_the_speaker_tracks(tmp_path: Path) -> None:
    """A real consultation's copy: no barcode to find, so one cell per speaker track, each
    still checked for dark and frozen stretches, and no A/V figures."""
    path = tmp_path / "plain.mp4"
    _record_grid(path, 2, barcodes=False)
    started = time.monotonic()
    ins = inspect_recording(path)
    assert time.monotonic() - started < 5.0
    assert ins.cells_found == "2 cells, one per speaker track (no synthetic barcode in the picture)"
    assert [c.label for c in ins.cells] == ["cell 1 (clinician)", "cell 2 (patient)"]
    assert all(not c.dark and not c.still for c in ins.cells)
    assert ins.av_offsets == []
    assert "no synthetic barcode in the picture" in ins.report()
