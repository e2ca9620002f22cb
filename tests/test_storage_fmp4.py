"""Real fragmented MP4 bytes for the storage tests, and the checks that read them.

``make_fmp4`` encodes H.264 + AAC with PyAV exactly as the recorder's writer does
(``frag_keyframe+empty_moov+default_base_moof``); ``Feeder`` appends it to a spool one
fragment at a time, as a recording in progress would.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from bot.storage.errors import StorageError
from bot.storage.verify import decode_probe, fragment_layout, top_level_boxes

FMP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


def make_fmp4(path: Path, *, seconds: float, fps: int = 25, bitrate: int = 6_000_000) -> Path:
    """Noise video (so the size is real, ~bitrate/8 bytes a second) and a tone."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", format="mp4", options=FMP4_OPTIONS) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.bit_rate = bitrate
        video.options = {"preset": "ultrafast", "g": str(fps), "keyint_min": str(fps)}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        frames = int(seconds * fps)
        samples_per_video_frame = 48000 // fps
        pts = 0
        for index in range(frames):
            image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
            t = (np.arange(samples_per_video_frame) + pts) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            aframe.sample_rate = 48000
            aframe.pts = pts
            pts += samples_per_video_frame
            out.mux(audio.encode(aframe))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


class Feeder:
    """Appends a finished fMP4 to a spool one fragment at a time, poking after each."""

    def __init__(self, source: Path, target: Path, on_fragment: Callable[[], None]) -> None:
        data = source.read_bytes()
        boxes = top_level_boxes(source, len(data))
        # Init segment first, then each moof+mdat pair; whatever trails goes last.
        cuts = [b.end for b in boxes if b.kind in (b"moov", b"mdat")] + [len(data)]
        self.chunks = [data[a:b] for a, b in zip([0, *cuts], cuts, strict=False) if b > a]
        self.data = data
        self._target = target
        self._on_fragment = on_fragment
        self.written = 0

    def write_until(self, nbytes: int) -> None:
        """Append whole chunks until at least ``nbytes`` are in the spool."""
        with self._target.open("ab") as out:
            while self.chunks and self.written < nbytes:
                chunk = self.chunks.pop(0)
                out.write(chunk)
                out.flush()
                self.written += len(chunk)
                self._on_fragment()

    def write_all(self) -> None:
        self.write_until(len(self.data))


@pytest.fixture(scope="session")
def fmp4_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fmp4(tmp_path_factory.mktemp("media") / "small.mp4", seconds=3, bitrate=400_000)


def test_layout_finds_init_and_fragments(fmp4_small: Path) -> None:
    size = fmp4_small.stat().st_size
    layout = fragment_layout(fmp4_small, size)
    kinds = [b.kind for b in top_level_boxes(fmp4_small, size)]
    assert kinds[:2] == [b"ftyp", b"moov"]
    assert kinds.count(b"moof") >= 3
    assert 0 < layout.init_end < layout.first_fragment_end <= layout.last_fragment[0]
    assert layout.last_fragment[1] <= size


def test_cut_short_file_keeps_complete_fragments_only(fmp4_small: Path, tmp_path: Path) -> None:
    data = fmp4_small.read_bytes()
    full = fragment_layout(fmp4_small, len(data))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: full.last_fragment[0] + 100])  # crash inside the last fragment
    layout = fragment_layout(cut, cut.stat().st_size)
    assert layout.last_fragment[1] <= full.last_fragment[0]
    probe = decode_probe(data[: layout.init_end] + data[slice(*layout.last_fragment)])
    assert probe.video_frames > 0
    assert probe.audio_frames > 0


def test_probe_decodes_start_and_end(fmp4_small: Path) -> None:
    data = fmp4_small.read_bytes()
    layout = fragment_layout(fmp4_small, len(data))
    start = decode_probe(data[: layout.first_fragment_end])
    end = decode_probe(data[: layout.init_end] + data[slice(*layout.last_fragment)])
    assert start.video_frames >= 1
    assert end.video_frames >= 1


def test_probe_rejects_garbage(fmp4_small: Path) -> None:
    data = fmp4_small.read_bytes()
    layout = fragment_layout(fmp4_small, len(data))
    with pytest.raises(StorageError) as info:
        decode_probe(data[: layout.init_end] + b"\0" * 4096)
    assert info.value.kind == "integrity"


def test_no_init_segment_is_an_integrity_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0\0\0\x10mdat" + b"x" * 8)
    with pytest.raises(StorageError, match="no init segment"):
        fragment_layout(junk, junk.stat().st_size)
