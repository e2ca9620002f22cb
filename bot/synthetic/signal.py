"""The synthetic participant's test signal: a picture and a sound a test can measure.

Every video frame carries, besides a human-readable counter, a barcode with the
participant number and the frame index, so a test can tell from a decoded recording which
source frame ended up at which output time. Once a second (t = k s, k >= 1) the picture
flashes and the audio beeps at 1 kHz starting at the exact sample k * 48000; between beeps
a quieter tone at a per-participant frequency runs, so a mixed track still shows who spoke.

Pure functions of (participant, frame or sample index): the same inputs always give the
same picture and samples, which is what lets the analysis know the truth.

Picture layout (fractions of the picture; the reader relies on it):
- background: a per-participant tint, never black, so letterbox bars around a scaled
  picture can be told apart from the picture itself;
- top band: "P<n> <frame index>" and the timecode "m:ss.cc" in a 3x5 bitmap font;
- middle: a bar sweeping left to right every 2 s; the whole area turns white for
  ``FLASH_FRAMES`` frames from each beep instant;
- bottom band: 36 blocks, black = 0 and white = 1: guard ``10``, participant (4 bits),
  frame index (20 bits, modulo 2**20), CRC-8 of those 24 bits, guard ``01``. Blocks are
  about 1/40 of the picture wide, large enough to survive 0.5x scaling and H.264 at 1 Mbps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE = 48_000
SAMPLES_PER_FRAME = 960
BEEP_HZ = 1_000
BEEP_SAMPLES = 2_880  # 60 ms: exactly 60 periods of 1 kHz, so the beep ends on a zero.
BEEP_AMPLITUDE = 0.5
TONE_AMPLITUDE = 0.1
FLASH_FRAMES = 3
MAX_PARTICIPANT = 15
FRAME_INDEX_BITS = 20
FRAME_INDEX_MODULO = 1 << FRAME_INDEX_BITS

# Luma levels (BT.601 limited range, what the encoders take).
_BLACK = 16
_WHITE = 235
_BAR = 180
_BACKGROUND_Y = 72

# Relative geometry: (top, bottom) or (left, right) as fractions of the picture.
_TEXT_LINES = ((0.04, 0.14), (0.16, 0.26))
_TEXT_LEFT = 0.04
_FLASH_ROWS = (0.30, 0.72)
_FLASH_COLS = (0.04, 0.96)
_BAR_WIDTH = 0.04
_CODE_ROWS = (0.78, 0.94)
_CODE_COLS = (0.04, 0.96)
_CODE_SAMPLE_ROWS = (0.81, 0.91)
_START_GUARD = (1, 0)
_END_GUARD = (0, 1)
_PAYLOAD_BITS = 4 + FRAME_INDEX_BITS
_CODE_BLOCKS = len(_START_GUARD) + _PAYLOAD_BITS + 8 + len(_END_GUARD)

# Reader thresholds, in 8-bit luma or RGB mean.
_PICTURE_MIN_LUMA = 36
_MIN_CONTRAST = 60
_FLASH_LUMA = 200
_FLASH_MIN_FRACTION = 0.8

# 3x5 bitmap font: each glyph is five rows of three bits, most significant bit left.
_FONT: dict[str, tuple[int, int, int, int, int]] = {
    "0": (0b111, 0b101, 0b101, 0b101, 0b111),
    "1": (0b010, 0b110, 0b010, 0b010, 0b111),
    "2": (0b111, 0b001, 0b111, 0b100, 0b111),
    "3": (0b111, 0b001, 0b111, 0b001, 0b111),
    "4": (0b101, 0b101, 0b111, 0b001, 0b001),
    "5": (0b111, 0b100, 0b111, 0b001, 0b111),
    "6": (0b111, 0b100, 0b111, 0b101, 0b111),
    "7": (0b111, 0b001, 0b010, 0b010, 0b010),
    "8": (0b111, 0b101, 0b111, 0b101, 0b111),
    "9": (0b111, 0b101, 0b111, 0b001, 0b111),
    "P": (0b111, 0b101, 0b111, 0b100, 0b100),
    ":": (0b000, 0b010, 0b000, 0b010, 0b000),
    ".": (0b000, 0b000, 0b000, 0b000, 0b010),
    " ": (0b000, 0b000, 0b000, 0b000, 0b000),
}


def tone_hz(number: int) -> int:
    """The participant's continuous tone: 440, 660, 880 Hz, ... skipping 1100 Hz.

    1100 Hz would sit 100 Hz from the 1 kHz beep, too close for the beep detector's
    5 ms window to reject, so participants from 4 on move one step further up.
    """
    _check_number(number)
    return 220 * (number + 1) if number <= 3 else 220 * (number + 2)


def is_flash_frame(index: int, fps: int) -> bool:
    """Whether source frame ``index`` shows the flash (the first frames of each second)."""
    second, within = divmod(index, fps)
    return second >= 1 and within < FLASH_FRAMES


# -- video --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolutionStep:
    """From ``at_s`` seconds on (source time) the picture is ``width`` x ``height``."""

    at_s: float
    width: int
    height: int


def resolution_at(schedule: tuple[ResolutionStep, ...], seconds: float) -> tuple[int, int]:
    """The picture size in force at ``seconds`` under a schedule sorted by ``at_s``."""
    current = schedule[0]
    for step in schedule:
        if step.at_s <= seconds:
            current = step
    return current.width, current.height


def render_i420(number: int, index: int, width: int, height: int, fps: int) -> NDArray[np.uint8]:
    """Source frame ``index`` as one I420 array of shape (height * 3 // 2, width).

    The layout is what ``av.VideoFrame.from_ndarray(..., format="yuv420p")`` takes, so no
    colour conversion runs per frame: the background is cached and only the moving parts
    are drawn on a copy.
    """
    _check_number(number)
    if width % 2 or height % 2 or width < 64 or height < 64:
        raise ValueError(f"picture size must be even and at least 64x64, got {width}x{height}")
    image = _background(number, width, height).copy()
    luma = image[:height]

    top, bottom = _span(_FLASH_ROWS, height)
    left, right = _span(_FLASH_COLS, width)
    if is_flash_frame(index, fps):
        luma[top:bottom, left:right] = _WHITE
        for plane in _chroma(image, width, height):
            plane[top // 2 : bottom // 2, left // 2 : right // 2] = 128
    else:
        bar = max(2, round(_BAR_WIDTH * width))
        period = 2 * fps
        x = left + (index % period) * (right - left - bar) // (period - 1)
        luma[top:bottom, x : x + bar] = _BAR

    seconds, frame_in_second = divmod(index, fps)
    centis = frame_in_second * 100 // fps
    minutes, secs = divmod(seconds, 60)
    _draw_text(luma, f"P{number} {index % 1_000_000:06d}", _TEXT_LINES[0])
    _draw_text(luma, f"{minutes % 100}:{secs:02d}.{centis:02d}", _TEXT_LINES[1])
    _draw_code(luma, _code_bits(number, index % FRAME_INDEX_MODULO))
    return image


@lru_cache(maxsize=32)
def _background(number: int, width: int, height: int) -> NDArray[np.uint8]:
    image = np.empty((height * 3 // 2, width), dtype=np.uint8)
    image[:height] = _BACKGROUND_Y
    # Each participant gets its own tint: U and V walk around the colour wheel.
    angle = 2 * np.pi * (number - 1) / 6
    u = round(128 + 40 * np.cos(angle))
    v = round(128 + 40 * np.sin(angle))
    u_plane, v_plane = _chroma(image, width, height)
    u_plane[:] = u
    v_plane[:] = v
    # Neutral chroma under the text and the barcode, so they read as white and black.
    for rows in (*_TEXT_LINES, _CODE_ROWS):
        top, bottom = _span(rows, height)
        u_plane[top // 2 : (bottom + 1) // 2] = 128
        v_plane[top // 2 : (bottom + 1) // 2] = 128
    image.setflags(write=False)
    return image


def _chroma(
    image: NDArray[np.uint8], width: int, height: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Views of the U and V planes inside an I420 array (stored flat after the luma)."""
    flat = image.reshape(-1)
    size = width * height
    u_plane = flat[size : size * 5 // 4].reshape(height // 2, width // 2)
    v_plane = flat[size * 5 // 4 :].reshape(height // 2, width // 2)
    return u_plane, v_plane


def _span(fractions: tuple[float, float], size: int) -> tuple[int, int]:
    return round(fractions[0] * size), round(fractions[1] * size)


@lru_cache(maxsize=64)
def _glyph(char: str, scale: int) -> NDArray[np.bool_]:
    rows = _FONT[char]
    bits = np.array([[(row >> (2 - c)) & 1 for c in range(3)] for row in rows], dtype=bool)
    return np.kron(bits, np.ones((scale, scale), dtype=bool)).astype(bool)


def _draw_text(luma: NDArray[np.uint8], text: str, rows: tuple[float, float]) -> None:
    height, width = luma.shape
    top, bottom = _span(rows, height)
    scale = max(1, (bottom - top) // 5)
    x = round(_TEXT_LEFT * width)
    for char in text:
        if x + 3 * scale > width:
            break
        glyph = _glyph(char, scale)
        target = luma[top : top + 5 * scale, x : x + 3 * scale]
        target[glyph] = _WHITE
        x += 4 * scale


def crc8(bits: list[int]) -> int:
    """CRC-8 (polynomial 0x07, initial value 0xA5) of a bit list, most significant first.

    The non-zero initial value makes an all-black or all-white band fail the check.
    """
    crc = 0xA5
    for bit in bits:
        feedback = ((crc >> 7) & 1) ^ bit
        crc = (crc << 1) & 0xFF
        if feedback:
            crc ^= 0x07
    return crc


def _code_bits(number: int, index: int) -> list[int]:
    payload = [(number >> (3 - b)) & 1 for b in range(4)]
    payload += [(index >> (FRAME_INDEX_BITS - 1 - b)) & 1 for b in range(FRAME_INDEX_BITS)]
    check = crc8(payload)
    return [*_START_GUARD, *payload, *[(check >> (7 - b)) & 1 for b in range(8)], *_END_GUARD]


def _block_edges(width: int) -> NDArray[np.int64]:
    left, right = _CODE_COLS[0] * width, _CODE_COLS[1] * width
    return np.round(np.linspace(left, right, _CODE_BLOCKS + 1)).astype(np.int64)


def _draw_code(luma: NDArray[np.uint8], bits: list[int]) -> None:
    height, width = luma.shape
    top, bottom = _span(_CODE_ROWS, height)
    edges = _block_edges(width)
    for b, bit in enumerate(bits):
        luma[top:bottom, edges[b] : edges[b + 1]] = _WHITE if bit else _BLACK


# -- reading a picture back -----------------------------------------------------------


@dataclass(frozen=True)
class SlotReading:
    """What one crop of a decoded frame shows; ``participant`` is None if unreadable."""

    participant: int | None
    frame_index: int | None
    flash: bool


def to_luma(image: NDArray[Any]) -> NDArray[np.float32]:
    """Luma of an RGB (h, w, 3) image, or the image itself if already single-plane."""
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] >= 3:
        rgb = image[..., :3].astype(np.float32)
        luma: NDArray[np.float32] = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return luma
    raise ValueError(f"expected an (h, w) or (h, w, 3) image, got shape {image.shape}")


def _picture_bounds(luma: NDArray[np.float32]) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the picture inside black bars, or None if no picture.

    The tinted background fills the margins of the picture, so its outermost rows and
    columns are mostly brighter than black while bars never are. Rows are found first
    (loosely, as a narrow picture leaves most of a row black), then columns within
    them, then rows again within those columns, each time by majority.
    """
    bright = luma > _PICTURE_MIN_LUMA
    rows = np.flatnonzero(bright.mean(axis=1) > 0.1)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(bright[rows[0] : rows[-1] + 1].mean(axis=0) > 0.5)
    if cols.size == 0:
        return None
    rows = np.flatnonzero(bright[:, cols[0] : cols[-1] + 1].mean(axis=1) > 0.5)
    if rows.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if bottom - top < 16 or right - left < 16:
        return None
    return top, bottom, left, right


def read_slot(image: NDArray[Any]) -> SlotReading:
    """Barcode and flash state of a participant's slot, at any scale and with black bars.

    The crop must contain the whole picture scaled without cropping (aspect kept or not);
    bars around it are found and skipped.
    """
    luma = to_luma(image)
    bounds = _picture_bounds(luma)
    if bounds is None:
        return SlotReading(None, None, flash=False)
    top, bottom, left, right = bounds
    picture = luma[top:bottom, left:right]
    decoded = _read_code(picture)
    participant, index = decoded if decoded else (None, None)
    return SlotReading(participant, index, flash=_read_flash(picture))


def read_barcode(rgb: NDArray[Any]) -> tuple[int, int] | None:
    """(participant, frame index modulo 2**20) from a crop of the slot, or None."""
    reading = read_slot(rgb)
    if reading.participant is None or reading.frame_index is None:
        return None
    return reading.participant, reading.frame_index


def read_flash(rgb: NDArray[Any]) -> bool:
    """Whether the crop shows a flash frame."""
    return read_slot(rgb).flash


def _read_code(picture: NDArray[np.float32]) -> tuple[int, int] | None:
    height, width = picture.shape
    top, bottom = _span(_CODE_SAMPLE_ROWS, height)
    edges = _block_edges(width)
    band = picture[top : max(bottom, top + 1)].mean(axis=0)
    values = np.empty(_CODE_BLOCKS, dtype=np.float32)
    for b in range(_CODE_BLOCKS):
        # The middle half of each block: edges blur under scaling and compression.
        start, stop = edges[b], edges[b + 1]
        quarter = (stop - start) / 4
        lo, hi = round(start + quarter), max(round(stop - quarter), round(start + quarter) + 1)
        values[b] = band[lo:hi].mean()
    low, high = float(values.min()), float(values.max())
    if high - low < _MIN_CONTRAST:
        return None
    bits = [int(v > (low + high) / 2) for v in values]
    guard = len(_START_GUARD)
    if tuple(bits[:guard]) != _START_GUARD or tuple(bits[-guard:]) != _END_GUARD:
        return None
    payload = bits[guard : guard + _PAYLOAD_BITS]
    check = bits[guard + _PAYLOAD_BITS : guard + _PAYLOAD_BITS + 8]
    if crc8(payload) != int("".join(map(str, check)), 2):
        return None
    number = int("".join(map(str, payload[:4])), 2)
    index = int("".join(map(str, payload[4:])), 2)
    return number, index


def _read_flash(picture: NDArray[np.float32]) -> bool:
    height, width = picture.shape
    top, bottom = _span(_FLASH_ROWS, height)
    left, right = _span(_FLASH_COLS, width)
    area = picture[top:bottom, left:right]
    return area.size > 0 and float((area > _FLASH_LUMA).mean()) > _FLASH_MIN_FRACTION


# -- audio --------------------------------------------------------------------------


def render_audio(
    number: int, first_sample: int, count: int, *, gain: float = 1.0
) -> NDArray[np.int16]:
    """Mono s16 samples ``first_sample`` .. ``first_sample + count`` of the participant.

    Phases come from exact integer arithmetic on the absolute sample index, so any frame
    boundary or restart gives the same waveform. ``gain`` scales everything (a
    near-silent mute uses about 0.001).
    """
    freq = tone_hz(number)
    n = np.arange(first_sample, first_sample + count, dtype=np.int64)
    tone = TONE_AMPLITUDE * np.sin(2 * np.pi * ((freq * n) % SAMPLE_RATE) / SAMPLE_RATE)
    within = n % SAMPLE_RATE
    beeping = (n >= SAMPLE_RATE) & (within < BEEP_SAMPLES)
    beep = BEEP_AMPLITUDE * np.sin(2 * np.pi * ((BEEP_HZ * within) % SAMPLE_RATE) / SAMPLE_RATE)
    signal = np.where(beeping, beep, tone) * gain
    return np.round(signal * 32767).astype(np.int16)


def _check_number(number: int) -> None:
    if not 1 <= number <= MAX_PARTICIPANT:
        raise ValueError(f"participant number must be 1..{MAX_PARTICIPANT}, got {number}")
