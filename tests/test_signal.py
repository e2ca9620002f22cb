"""The test signal survives what a recorder does to it, and the analysis measures it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from numpy.typing import NDArray
from testbed.analysis import Rect, abs_percentile, analyze_recording, audio_rms, detect_beeps

from bot.synthetic.signal import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    ResolutionStep,
    crc8,
    is_flash_frame,
    read_barcode,
    read_flash,
    render_audio,
    render_i420,
    resolution_at,
    tone_hz,
)


def _frame(number: int, index: int, width: int = 640, height: int = 360) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(
        render_i420(number, index, width, height, 30), format="yuv420p"
    )


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.0, 1.5, 2.0])
@pytest.mark.parametrize(("number", "index"), [(1, 0), (2, 31), (15, (1 << 20) - 1), (7, 54321)])
def test_barcode_survives_scaling(scale: float, number: int, index: int) -> None:
    width, height = round(640 * scale) // 2 * 2, round(360 * scale) // 2 * 2
    rgb = _frame(number, index).reformat(width=width, height=height, format="rgb24").to_ndarray()
    assert read_barcode(rgb) == (number, index)
    assert read_flash(rgb) == is_flash_frame(index, 30)


def test_barcode_found_inside_black_bars_and_absent_on_black() -> None:
    rgb = _frame(3, 95).reformat(width=320, height=180, format="rgb24").to_ndarray()
    slot = np.zeros((360, 400, 3), dtype=np.uint8)
    slot[90:270, 40:360] = rgb
    assert read_barcode(slot) == (3, 95)
    assert read_barcode(np.zeros((180, 320, 3), dtype=np.uint8)) is None
    assert read_barcode(np.full((180, 320, 3), 120, dtype=np.uint8)) is None


def test_barcode_survives_h264_at_1mbps_and_half_scale() -> None:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 640, 360, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.bit_rate = 1_000_000
    codec.options = {"preset": "ultrafast", "tune": "zerolatency"}
    decoder = av.CodecContext.create("h264", "r")
    decoded: list[tuple[int, int] | None] = []
    for i in range(45):
        frame = _frame(2, 1000 + i)
        frame.pts = i
        for packet in codec.encode(frame):
            for out in decoder.decode(packet):
                small = out.reformat(width=320, height=180, format="rgb24").to_ndarray()
                decoded.append(read_barcode(small))
    assert decoded, "the encoder produced nothing"
    assert decoded == [(2, 1000 + i) for i in range(len(decoded))]


def test_crc_rejects_single_bit_errors() -> None:
    bits = [1, 0, 1, 1] + [0] * 19 + [1]
    for flip in range(len(bits)):
        damaged = list(bits)
        damaged[flip] ^= 1
        assert crc8(damaged) != crc8(bits)


def test_resolution_schedule_and_tones() -> None:
    schedule = (ResolutionStep(0, 640, 360), ResolutionStep(4.0, 1280, 720))
    assert resolution_at(schedule, 3.99) == (640, 360)
    assert resolution_at(schedule, 4.0) == (1280, 720)
    assert [tone_hz(n) for n in (1, 2, 3, 4)] == [440, 660, 880, 1320]
    with pytest.raises(ValueError, match="participant number"):
        render_audio(0, 0, 10)


def test_audio_frames_join_seamlessly() -> None:
    whole = render_audio(1, 0, 4 * SAMPLES_PER_FRAME)
    pieces = np.concatenate(
        [render_audio(1, j * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME) for j in range(4)]
    )
    assert np.array_equal(whole, pieces)


def _to_float(samples: NDArray[np.int16]) -> NDArray[np.float32]:
    return samples.astype(np.float32) / np.float32(32768)


def test_beep_onsets_are_sample_accurate_in_a_noisy_mix() -> None:
    delay = 6034  # samples: the second participant starts 125.7 ms after the first
    count = 4 * SAMPLE_RATE
    first = _to_float(render_audio(1, 0, count)) * 0.5
    second = np.zeros(count, dtype=np.float32)
    second[delay:] = _to_float(render_audio(2, 0, count - delay)) * 0.3
    noise = np.random.default_rng(7).normal(0, 0.01, count).astype(np.float32)
    onsets = detect_beeps(first + second + noise)
    expected = sorted(
        [k * SAMPLE_RATE for k in (1, 2, 3)] + [k * SAMPLE_RATE + delay for k in (1, 2, 3)]
    )
    assert len(onsets) == len(expected)
    for got, want in zip(onsets, expected, strict=True):
        assert abs(got - want) <= SAMPLE_RATE / 1000  # 1 ms


def test_beep_onsets_survive_opus_with_packet_timestamps() -> None:
    """Placed by packet pts (pre-skip included, as aiortc does), onsets stay exact."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.format, encoder.layout = SAMPLE_RATE, "s16", "mono"
    encoder.bit_rate = 32_000
    encoder.time_base = Fraction(1, SAMPLE_RATE)
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.format, decoder.layout = SAMPLE_RATE, "s16", "stereo"
    out = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    for j in range(3 * SAMPLE_RATE // SAMPLES_PER_FRAME - 1):
        pcm = render_audio(2, j * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, j * SAMPLES_PER_FRAME
        for packet in encoder.encode(frame):
            assert packet.pts is not None
            for decoded in decoder.decode(packet):
                mono = decoded.to_ndarray().reshape(-1, 2).mean(axis=1) / 32768
                start = packet.pts
                if start >= 0:
                    out[start : start + len(mono)] = mono[: len(out) - start]
    onsets = detect_beeps(out)
    assert len(onsets) == 2
    for k, got in zip((1, 2), onsets, strict=True):
        assert abs(got - k * SAMPLE_RATE) <= SAMPLE_RATE / 1000


# -- analysis of a synthetic recording ------------------------------------------------

_OUT_W, _OUT_H, _OUT_FPS = 640, 360, 30
_SRC_FPS = 25
_SLOTS = (Rect(0, 90, 320, 180), Rect(320, 90, 320, 180))
_STARTS = (0.0, 0.37)  # output time of each participant's source time 0
_AUDIO_LATE = 0.030


def _planes(image: NDArray[Any], width: int, height: int) -> list[NDArray[Any]]:
    flat = image.reshape(-1)
    size = width * height
    return [
        flat[:size].reshape(height, width),
        flat[size : size * 5 // 4].reshape(height // 2, width // 2),
        flat[size * 5 // 4 :].reshape(height // 2, width // 2),
    ]


def _composite(n: int) -> av.VideoFrame:
    """Output frame n: each participant's latest source frame, scaled into its slot."""
    out = np.zeros((_OUT_H * 3 // 2, _OUT_W), dtype=np.uint8)
    out_planes = _planes(out, _OUT_W, _OUT_H)
    out_planes[1][:] = 128
    out_planes[2][:] = 128
    for number, (slot, start) in enumerate(zip(_SLOTS, _STARTS, strict=True), start=1):
        source_s = n / _OUT_FPS - start
        if source_s < 0:
            continue
        index = int(source_s * _SRC_FPS + 1e-9)
        src = av.VideoFrame.from_ndarray(render_i420(number, index, 640, 360, _SRC_FPS), "yuv420p")
        small = src.reformat(width=slot.width, height=slot.height).to_ndarray()
        for plane, part, div in zip(
            out_planes, _planes(small, slot.width, slot.height), (1, 2, 2), strict=True
        ):
            y, x = slot.y // div, slot.x // div
            plane[y : y + part.shape[0], x : x + part.shape[1]] = part
    frame = av.VideoFrame.from_ndarray(out, format="yuv420p")
    frame.pts = n
    return frame


def _mixed_audio(count: int) -> NDArray[np.float32]:
    mix = np.zeros(count, dtype=np.float32)
    for number, start in enumerate(_STARTS, start=1):
        offset = round((start + _AUDIO_LATE) * SAMPLE_RATE)
        mix[offset:] += _to_float(render_audio(number, 0, count - offset)) * 0.5
    return mix


@pytest.fixture(scope="module")
def synthetic_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analysis") / "synthetic.mp4"
    seconds = 3.6
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=_OUT_FPS)
        video.width, video.height, video.pix_fmt = _OUT_W, _OUT_H, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for n in range(round(seconds * _OUT_FPS)):
            container.mux(video.encode(_composite(n)))
        container.mux(video.encode(None))
        mix = _mixed_audio(round(seconds * SAMPLE_RATE))
        size = 1024
        for j in range(len(mix) // size):
            chunk = mix[j * size : (j + 1) * size].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, j * size
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def test_analysis_measures_a_known_offset(synthetic_recording: Path) -> None:
    report = analyze_recording(synthetic_recording, _SLOTS, src_fps=_SRC_FPS, frame_reference=0.5)
    assert sorted(report.participants) == [1, 2]
    for number, start in enumerate(_STARTS, start=1):
        participant = report.participants[number]
        assert participant.frames_seen >= 70
        assert participant.missing_frames() == []
        assert [b.k for b in participant.beeps] == [1, 2, 3]
        for beep in participant.beeps:
            assert beep.video_offset_s == pytest.approx(start, abs=0.005)
            assert beep.audio_offset_s == pytest.approx(start + _AUDIO_LATE, abs=0.002)
            assert beep.av_offset_s == pytest.approx(-_AUDIO_LATE, abs=0.006)
            assert beep.flash_offset_s is not None
            assert -_AUDIO_LATE - 0.001 <= beep.flash_offset_s < -_AUDIO_LATE + 1 / _OUT_FPS
    assert report.av_offset_p50() == pytest.approx(_AUDIO_LATE, abs=0.006)
    assert report.av_offset_p95() == pytest.approx(_AUDIO_LATE, abs=0.006)


def test_audio_rms_per_stream(synthetic_recording: Path) -> None:
    (level,) = audio_rms(synthetic_recording)
    assert 0.02 < level < 0.2


def test_percentile_of_nothing_is_an_error() -> None:
    assert abs_percentile([-0.01, 0.02, 0.03], 50) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="no measurements"):
        abs_percentile([], 95)
