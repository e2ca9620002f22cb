"""Burned-in captions: each cell's role label and state, and the wall-clock time.

Someone opening a record must see at once who is who and when this was, in real time,
without the manifest beside it. The clock is ``Timeline.origin_wall + tick``, the same
origin as the manifest's ``started_at``, so the picture and the manifest agree.

The text is a built-in 5x7 pixel font (with descenders), scaled by a whole factor with
the output height so it is as legible at 360p as at 720p, white on a solid dark box,
written straight into the yuv420p planes: no font library, no new dependency. Boxes are
rebuilt only when their text changes (the clock once a second, a label when its state
does); every frame only copies them in.

The compositor paints its output frame in place and repaints only what changed, so a
caption drawn into it would stay behind where the compositor does not repaint (a box
that shrinks when a pause ends, over a letterbox bar). So ``draw`` keeps what it covered
and ``erase`` puts it back before the next ``compose``: the compositor always finds its
own picture, and the captions are a layer on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import av
import numpy as np
import numpy.typing as npt

from bot.config import RecordingSettings
from bot.media.layout import Rect
from bot.media.withholding import CONSENT_PENDING, CONSENT_WITHDRAWN, PAUSED

GLYPH_WIDTH, GLYPH_HEIGHT = 5, 9
"""Font pixels of a glyph: capitals and digits on rows 0-6, descenders on rows 7-8."""
ADVANCE = GLYPH_WIDTH + 1
PAD = 2
"""Font pixels of box around the text."""
BOX_Y, TEXT_Y, NEUTRAL_UV = 16, 235, 128
REFERENCE_HEIGHT = 360
"""The output height drawn at scale 1 (a 9-pixel line); 720p draws at 2, 1080p at 3."""
MUTED_AFTER = 2.0
"""Seconds without a sound from a participant before their cell says "muted"."""
SILENT = 2.0**-15
"""Below one 16-bit step: digital silence (a muted microphone, no packets), not a quiet room."""
STATES = {
    PAUSED: "paused",
    CONSENT_WITHDRAWN: "consent withdrawn",
    CONSENT_PENDING: "consent pending",
}
UNKNOWN = "?"

_FONT = {
    " ": "",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .#### #.... #.... #.... .####",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. ...##",
    "m": "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .#### #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "-": "..... ..... ..... .###. ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... ..... #####",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    UNKNOWN: ".###. #...# ....# ...#. ..#.. ..... ..#..",
}
CHARACTERS = frozenset(_FONT)


def _glyph(rows: str) -> npt.NDArray[np.bool_]:
    """A glyph's rows as a ``GLYPH_HEIGHT x ADVANCE`` mask (the last column is spacing)."""
    mask = np.zeros((GLYPH_HEIGHT, ADVANCE), dtype=bool)
    for y, row in enumerate(rows.split()):
        mask[y, :GLYPH_WIDTH] = [c == "#" for c in row]
    return mask


GLYPHS = {char: _glyph(rows) for char, rows in _FONT.items()}
"""Each character's mask at scale 1, for drawing and for reading the text back."""


def scale_for(height: int) -> int:
    """Text grows with the frame, so it covers the same share of the picture at any size."""
    return max(1, round(height / REFERENCE_HEIGHT))


def box_height(scale: int) -> int:
    """Even, so that the box covers whole 4:2:0 chroma samples."""
    return math.ceil((GLYPH_HEIGHT + 2 * PAD) * scale / 2) * 2


def clock_zone(name: str) -> tzinfo:
    """UTC needs no time zone database (a slim image may have none); others do."""
    return UTC if name == "UTC" else ZoneInfo(name)


@dataclass(frozen=True)
class Captions:
    """What the captions say: labels by role, the clock's zone, the consultation id."""

    labels: Mapping[str, str] = field(default_factory=dict)
    """Text shown for a role; a role not listed shows the role itself (never a name)."""
    zone: str = "UTC"
    consultation_id: str | None = None

    @classmethod
    def of(cls, settings: RecordingSettings) -> Captions | None:
        """The recording's captions, or None when ``overlay`` is off."""
        if not settings.overlay:
            return None
        shown = settings.consultation_id if settings.show_consultation_id else None
        return cls(dict(settings.labels), settings.clock_zone, shown)


@dataclass
class _Box:
    """One caption: where it goes, and its luma once drawn (chroma is neutral)."""

    x: int
    y: int
    room: int
    """The most width it may take: it is clipped to its cell, or the frame."""
    text: str | None = None
    patch: npt.NDArray[np.uint8] | None = None

    def show(self, text: str, scale: int) -> None:
        """Draw ``text`` into a new patch, unless it is already the one shown."""
        if text == self.text:
            return
        self.text = text
        mask = render(text, scale)
        pad = PAD * scale
        width = min(self.room, math.ceil((mask.shape[1] - scale + 2 * pad) / 2) * 2)
        patch = np.full((box_height(scale), width), BOX_Y, dtype=np.uint8)
        visible = mask[:, : max(0, width - pad)]
        patch[pad : pad + mask.shape[0], pad : pad + visible.shape[1]][visible] = TEXT_Y
        self.patch = patch


def render(text: str, scale: int) -> npt.NDArray[np.bool_]:
    """``text`` as a mask, ``scale`` output pixels to a font pixel; unknown characters
    show as ``?`` so that the wrong text is never silently shorter."""
    if not text:
        return np.zeros((GLYPH_HEIGHT * scale, 0), dtype=bool)
    mask = np.concatenate([GLYPHS.get(c, GLYPHS[UNKNOWN]) for c in text], axis=1)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


class Overlay:
    """Draws the captions into each output frame, and takes them out again."""

    def __init__(
        self,
        width: int,
        height: int,
        cells: Sequence[tuple[Rect, str]],
        captions: Captions,
        *,
        origin_wall: float,
    ) -> None:
        """``cells``: each cell's rectangle and role, in slot order; ``origin_wall``: the
        Unix time of timeline second 0 (``Timeline.origin_wall``)."""
        self._scale = scale_for(height)
        self._origin = origin_wall
        self._zone = clock_zone(captions.zone)
        self._suffix = f"  {captions.consultation_id}" if captions.consultation_id else ""
        self._labels = [captions.labels.get(role, role) for _, role in cells]
        self._clock = _Box(0, 0, width)
        self._cells = [_Box(0, 0, 0) for _ in cells]
        self.place([rect for rect, _ in cells])
        self._heard = [0.0] * len(cells)
        self._second: int | None = None
        self._saved: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]] = []
        """Each region a caption covers (a view of the frame) and what was there."""
        self._planes: list[npt.NDArray[np.uint8]] = []
        self._frame: av.VideoFrame | None = None

    def place(self, rects: Sequence[Rect]) -> None:
        """Put each cell's caption at the foot of its rectangle (slot order): at the start,
        and when the cells move (a speaker switch). Call it between ``erase`` and
        ``draw``, so nothing is put back where the cells no longer are."""
        tall = box_height(self._scale)
        for box, r in zip(self._cells, rects, strict=True):
            where = (r.x, max(r.y, r.y + r.height - tall), r.width)
            if where != (box.x, box.y, box.room):
                box.x, box.y, box.room = where
                box.text = None  # drawn again for its new width

    def listen(self, end: float, voices: Sequence[npt.NDArray[np.float32]]) -> None:
        """Note who made a sound in the audio chunk ending at timeline second ``end``."""
        for index, samples in enumerate(voices[: len(self._heard)]):
            if samples.size and float(np.abs(samples).max()) >= SILENT:
                self._heard[index] = end

    def draw(self, frame: av.VideoFrame, tick: float, withheld: Sequence[str | None]) -> None:
        """Caption ``frame``, the picture of timeline second ``tick``, in place."""
        self._bind(frame)
        second = math.floor(self._origin + tick)
        if second != self._second:
            self._second = second
            stamp = datetime.fromtimestamp(second, self._zone)
            self._clock.show(stamp.strftime("%Y-%m-%d %H:%M:%S %Z") + self._suffix, self._scale)
        self._blit(self._clock)
        for index, box in enumerate(self._cells):
            reason = withheld[index] if index < len(withheld) else None
            if reason is not None:
                state: str | None = STATES.get(reason, reason.replace("_", " "))
            else:
                state = "muted" if tick - self._heard[index] > MUTED_AFTER else None
            label = self._labels[index]
            box.show(f"{label} - {state}" if state else label, self._scale)
            self._blit(box)

    def erase(self) -> None:
        """Put back what the captions covered, newest first (boxes may overlap)."""
        for region, under in reversed(self._saved):
            region[...] = under
        self._saved.clear()

    def _bind(self, frame: av.VideoFrame) -> None:
        """Views of ``frame``'s planes; the compositor hands out the same frame every tick."""
        if frame is self._frame:
            return
        self._frame = frame
        self._planes = [
            np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)[
                :, : plane.width
            ]
            for plane in frame.planes
        ]

    def _blit(self, box: _Box) -> None:
        """Copy the box in, keeping what it covers for ``erase``."""
        assert box.patch is not None
        height, width = box.patch.shape
        x, y = box.x, box.y
        luma, u, v = self._planes
        chroma = np.s_[y // 2 : (y + height) // 2, x // 2 : (x + width) // 2]
        regions: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | int]] = [
            (luma[y : y + height, x : x + width], box.patch),
            (u[chroma], NEUTRAL_UV),
            (v[chroma], NEUTRAL_UV),
        ]
        for region, value in regions:
            self._saved.append((region, region.copy()))
            region[...] = value
