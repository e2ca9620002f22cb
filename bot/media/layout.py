"""Where each participant's picture goes on the fixed-size output frame.

Two layouts, chosen once per recording (``recording.layout_mode``):

- ``grid``: equal cells. The rows and columns are the ones that show the most picture
  for the participants' expected aspect (``recording.participant_aspect``), and each cell
  is shaped to that aspect inside its share of the frame, so a participant of the
  expected shape fills its cell and the bars are only where the shapes differ.
- ``speaker``: the current speaker in one large cell, the others in a strip of small
  cells beside it. Who speaks is decided by ``SpeakerSelector`` from the voices' levels.

The cells are decided from the configured aspect, never from the frames that arrive: a
participant whose resolution or aspect changes mid-call is fitted into the same cell
(``Rect.fit``) or cropped to it (``Rect.cover``), so no one's place ever jumps. Every
arrangement is computed up front, so a speaker switch only moves rectangles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from bot.config import RecordingSettings
from bot.media.report import SAMPLE_RATE

Aspect = tuple[int, int]
LayoutMode = Literal["grid", "speaker"]
Fit = Literal["contain", "cover"]
AREA_TOLERANCE = 0.01
"""Grids showing within 1% of the most picture count as equal (rounding to even pixels
decides such ties otherwise); the squarer one is kept, as the old grid had it."""
STRIP_SHARE = 4
"""The speaker layout's strip takes a quarter of the frame's long side."""
STRIP_CELLS = 4
"""Small cells the strip is sized for; more participants make them smaller."""


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    def fit(self, width: int, height: int) -> Rect:
        """The largest rectangle of ``width:height`` aspect centred in this one, even-sized.

        Even sizes and offsets keep 4:2:0 chroma planes aligned.
        """
        scale = min(self.width / width, self.height / height)
        w = max(2, int(width * scale) // 2 * 2)
        h = max(2, int(height * scale) // 2 * 2)
        x = self.x + (self.width - w) // 4 * 2
        y = self.y + (self.height - h) // 4 * 2
        return Rect(x, y, w, h)

    def cover(self, width: int, height: int) -> tuple[int, int]:
        """The even size a ``width`` x ``height`` picture is scaled to so that it covers
        this rectangle, cropping only what sticks out on one axis (crop-to-fill)."""
        scale = max(self.width / width, self.height / height)
        w = max(self.width, round(width * scale) // 2 * 2)
        h = max(self.height, round(height * scale) // 2 * 2)
        return w, h

    def overlaps(self, other: Rect) -> bool:
        return (
            self.x < other.x + other.width
            and other.x < self.x + self.width
            and self.y < other.y + other.height
            and other.y < self.y + self.height
        )


def grid(count: int, width: int, height: int) -> list[Rect]:
    """Split the frame into ``count`` equal cells, as square a grid as the count allows.

    The share of the frame each cell may use; ``bot inspect`` looks for cells in these
    when a file has no manifest (the pictures of ``grid_cells`` lie inside them).
    """
    if count <= 0:
        return []
    columns = math.ceil(math.sqrt(count))
    return _slots(count, columns, math.ceil(count / columns), width, height)


def _slots(count: int, columns: int, rows: int, width: int, height: int) -> list[Rect]:
    cell_w = width // columns // 2 * 2
    cell_h = height // rows // 2 * 2
    return [
        Rect((i % columns) * cell_w, (i // columns) * cell_h, cell_w, cell_h) for i in range(count)
    ]


def shown_area(count: int, shape: tuple[int, int], width: int, height: int, aspect: Aspect) -> int:
    """Pixels of picture ``count`` participants of ``aspect`` show in a grid of ``shape``
    (columns, rows)."""
    slot = _slots(1, *shape, width, height)[0]
    cell = slot.fit(*aspect)
    return count * cell.width * cell.height


def choose_grid(count: int, width: int, height: int, aspect: Aspect) -> tuple[int, int]:
    """(columns, rows) showing the most picture; among near-equals, the fewest empty
    cells, then the squarest grid (two 16:9 participants in a 16:9 frame: side by side)."""
    square = math.ceil(math.sqrt(count))
    options = [(c, math.ceil(count / c)) for c in range(1, count + 1)]
    areas = {o: shown_area(count, o, width, height, aspect) for o in options}
    best = max(areas.values())
    near = [o for o in options if areas[o] >= best * (1 - AREA_TOLERANCE)]
    return min(near, key=lambda o: (o[0] * o[1] - count, abs(o[0] - square), -o[0]))


def grid_cells(count: int, width: int, height: int, aspect: Aspect) -> list[Rect]:
    """Each participant's cell, in slot order: the chosen grid's shares, each shaped to
    ``aspect``."""
    if count <= 0:
        return []
    columns, rows = choose_grid(count, width, height, aspect)
    return [slot.fit(*aspect) for slot in _slots(count, columns, rows, width, height)]


def speaker_cells(count: int, width: int, height: int, aspect: Aspect, speaker: int) -> list[Rect]:
    """Each participant's cell, in slot order, with ``speaker`` large and the others in
    slot order in a strip: on the right of a landscape frame, below a portrait one."""
    if count <= 1:
        return grid_cells(count, width, height, aspect)
    others = count - 1
    if width >= height:
        strip = width // STRIP_SHARE // 2 * 2
        small = height // max(STRIP_CELLS, others) // 2 * 2
        large = Rect(0, 0, width - strip, height).fit(*aspect)
        top = (height - small * others) // 4 * 2
        places = [Rect(width - strip, top + i * small, strip, small) for i in range(others)]
    else:
        strip = height // STRIP_SHARE // 2 * 2
        small = width // max(STRIP_CELLS, others) // 2 * 2
        large = Rect(0, 0, width, height - strip).fit(*aspect)
        left = (width - small * others) // 4 * 2
        places = [Rect(left + i * small, height - strip, small, strip) for i in range(others)]
    smalls = iter(place.fit(*aspect) for place in places)
    return [large if slot == speaker else next(smalls) for slot in range(count)]


@dataclass(frozen=True)
class LayoutSpec:
    """How the recording lays out its cells (``recording.layout_mode``, ``fit``,
    ``participant_aspect``)."""

    mode: LayoutMode = "grid"
    fit: Fit = "contain"
    aspect: Aspect = (16, 9)

    @classmethod
    def of(cls, settings: RecordingSettings) -> LayoutSpec:
        width, _, height = settings.participant_aspect.partition(":")
        return cls(settings.layout_mode, settings.fit, (int(width), int(height)))


class Layout:
    """Every arrangement of one recording's cells, computed once: a switch only picks one."""

    def __init__(self, spec: LayoutSpec, count: int, width: int, height: int) -> None:
        self.spec = spec
        if spec.mode == "speaker" and count > 1:
            self._arrangements = [
                speaker_cells(count, width, height, spec.aspect, s) for s in range(count)
            ]
        else:
            self._arrangements = [grid_cells(count, width, height, spec.aspect)]

    @property
    def switches(self) -> bool:
        """Whether the cells move with the speaker."""
        return len(self._arrangements) > 1

    def cells(self, speaker: int = 0) -> list[Rect]:
        """Each slot's cell while ``speaker`` is the one shown large (ignored in a grid)."""
        return self._arrangements[speaker if self.switches else 0]


@dataclass
class LayoutReport:
    """The layout as the manifest records it: the cells at the start (slot order) and
    every speaker switch as (timeline second, participant id)."""

    spec: LayoutSpec
    cells: list[Rect]
    switches: list[tuple[float, str]] = field(default_factory=list)


SPEAKER_HOLD_SECONDS = 1.5
"""How long someone must be the clear loudest before the large cell goes to them: a
cough, a "yes" or a laugh does not move the picture."""
SPEAKER_MARGIN = 2.0
"""The clear loudest is at least this much (6 dB) above the one shown large."""
SPEECH_LEVEL = 10 ** (-40 / 20)
"""RMS (0.01, -40 dBFS) under which a voice is not speaking: room noise, a muted mic.
When no one is above it nothing switches."""
LEVEL_RELEASE_SECONDS = 0.3
"""Each voice's level jumps up with a loud chunk and falls with this time constant, so
the short pauses between words do not restart the hold."""


class SpeakerSelector:
    """Who is shown large, from each voice's level in the audio the mixer hands out."""

    def __init__(self, count: int, speaker: int = 0) -> None:
        self.speaker = speaker
        self._levels = np.zeros(count)
        self._candidate: int | None = None
        self._since = 0.0

    def hear(self, start: float, voices: Sequence[npt.NDArray[np.float32]]) -> int | None:
        """Take the chunk of each voice starting at timeline second ``start``; the new
        speaker's slot if the large cell moves now, else None."""
        size = max((v.size for v in voices), default=0)
        if not size:
            return None
        seconds = size / SAMPLE_RATE
        decay = math.exp(-seconds / LEVEL_RELEASE_SECONDS)
        rms = np.array([float(np.sqrt(np.mean(np.square(v)))) if v.size else 0.0 for v in voices])
        self._levels = np.maximum(rms, self._levels[: rms.size] * decay)
        loudest = int(np.argmax(self._levels))
        level = self._levels[loudest]
        clear = (
            loudest != self.speaker
            and level >= SPEECH_LEVEL
            and level >= SPEAKER_MARGIN * self._levels[self.speaker]
        )
        if not clear:
            self._candidate = None
            return None
        if self._candidate != loudest:
            self._candidate, self._since = loudest, start
        if start + seconds - self._since < SPEAKER_HOLD_SECONDS:
            return None
        self.speaker, self._candidate = loudest, None
        return loudest
