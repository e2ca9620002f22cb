"""Video: each participant's frames scaled into its cell of a fixed-size output grid.

Runs in the media thread. For each output tick it shows, per cell, the input frame whose
timeline time is nearest the tick, so frames are neither shifted by up to a frame period
(as "latest before" would) nor collapsed when timestamps collide. Inputs of any size,
changing mid-stream, are scaled to fit their cell (``contain``: the whole picture, bars
where its aspect differs) or to fill it (``cover``: cropped by that difference); a cell
with no recent frame freezes its last picture briefly, then turns black. Cells move only
when ``arrange`` is called (a speaker switch): the moved ones are repainted once, from
the frame they last showed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from bot.media.gaps import GapTracker
from bot.media.layout import Fit, Rect

BLACK_Y, BLACK_UV = 16, 128
FREEZE_SECONDS = 1.0
"""How long a cell keeps its last picture after its frames stop before turning black."""
GAP_AFTER_SECONDS = 0.5
"""A cell whose newest frame is older than this is in a gap (1 fps "muted" video is one)."""
MAX_PENDING = 90
"""Frames waiting per cell (3 s at 30 fps; the media thread trails real time by
``latency``, 1 s by default); beyond it the oldest go: a starved thread or a mapping far
in the future."""


@dataclass
class _Cell:
    rect: Rect
    gaps: GapTracker
    pending: list[tuple[float, int, av.VideoFrame]] = field(default_factory=list)
    shown: tuple[float, int] | None = None
    cut: float | None = None
    """The participant left at this timeline second: no frozen picture past it."""
    scaled: tuple[Rect, list[npt.NDArray[np.uint8]]] | None = None
    painted: tuple[Rect, list[npt.NDArray[np.uint8]]] | None = None
    """The picture the output frame shows in this cell; None: the cell is all black."""
    source: av.VideoFrame | None = None
    """The input frame last shown, to scale again when the cell moves."""
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)
    """The cell's own scaler: ``VideoFrame.reformat`` makes one per frame, and every
    decoded frame is new, so each paid swscale's set-up (most of the cost of an
    upscale, and all of it when one frame went to cells of two sizes)."""
    frames_in: int = 0
    frames_shown: int = 0
    frames_skipped: int = 0
    frames_late: int = 0
    sequence: int = 0


class Compositor:
    """Builds one yuv420p output frame per tick from the cells' pending input frames."""

    def __init__(self, width: int, height: int, fps: int, fit: Fit = "contain") -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.fit = fit
        self._cells: list[_Cell] = []
        # One output frame, painted in place and handed to the encoder every tick: x264
        # copies it in, so a fresh 1.4 MB frame per tick would be allocated and filled
        # for nothing. Only what changed is repainted.
        self._frame = av.VideoFrame(width, height, "yuv420p")
        self._planes = [
            np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)[
                :, : plane.width
            ]
            for plane in self._frame.planes
        ]
        self._fill_black(Rect(0, 0, width, height))

    def add_cell(self, rect: Rect, gaps: GapTracker) -> int:
        self._cells.append(_Cell(rect, gaps))
        return len(self._cells) - 1

    def arrange(self, rects: Sequence[Rect]) -> None:
        """Move the cells (in cell order) to ``rects``: a speaker switch.

        Only the cells that move cost anything, once: their old places go black (all of
        them first, as a moved cell may land where another was), and a picture that was
        showing is scaled from its input frame and painted in the new place at once, so
        it moves without a black frame, even while ``compose`` only repeats (catching up).
        """
        moved = [(c, r, c.painted is not None) for c, r in zip(self._cells, rects, strict=True)]
        moved = [m for m in moved if m[0].rect != m[1]]
        for cell, _, _ in moved:
            self._fill_black(cell.rect)
            cell.painted = None
        for cell, rect, showing in moved:
            cell.rect = rect
            if cell.scaled is not None and cell.source is not None:
                cell.scaled = self._scale(cell, cell.source)
                if showing:
                    self._paint(cell, cell.scaled)

    def cut(self, cell: int, at: float) -> None:
        self._cells[cell].cut = at

    def label(self, cell: int, participant_id: str) -> None:
        self._cells[cell].gaps.participant = participant_id

    def push(self, cell: int, t: float, frame: av.VideoFrame) -> None:
        c = self._cells[cell]
        c.frames_in += 1
        c.sequence += 1
        bisect.insort(c.pending, (t, c.sequence, frame), key=lambda item: (item[0], item[1]))
        if len(c.pending) > MAX_PENDING:
            del c.pending[0]
            c.frames_skipped += 1

    def compose(
        self, tick: float, withheld: Sequence[str | None] = (), repeat: bool = False
    ) -> av.VideoFrame:
        """The output frame for ``tick``: the same frame object every call, so it must be
        encoded (or copied) before the next call.

        ``withheld``: per cell, why its picture is kept out of the record (black), if it is.

        ``repeat``: the media thread is behind real time, so the cells only move on (stale
        frames are consumed, gaps tracked) and the previous picture is sent again, which
        costs no scaling and almost nothing to encode: the picture's frame rate degrades
        instead of memory growing.
        """
        half_period = 0.5 / self.fps
        for index, cell in enumerate(self._cells):
            reason = withheld[index] if index < len(withheld) else None
            self._advance(cell, tick, half_period, scale=not repeat)
            age = tick - cell.shown[0] if cell.shown is not None else float("inf")
            if cell.cut is not None and cell.shown is not None and cell.shown[0] < cell.cut <= tick:
                age = float("inf")  # dropped on purpose: black at once, not a frozen picture
            cell.gaps.update(tick, age < GAP_AFTER_SECONDS, reason)
            if repeat:
                continue
            if age <= FREEZE_SECONDS and reason is None and cell.scaled is not None:
                self._paint(cell, cell.scaled)
            elif cell.painted is not None:
                self._fill_black(cell.rect)
                cell.painted = None
        return self._frame

    def stats(self) -> list[dict[str, int]]:
        return [
            {
                "frames_in": c.frames_in,
                "frames_shown": c.frames_shown,
                "frames_skipped": c.frames_skipped,
                "frames_late": c.frames_late,
            }
            for c in self._cells
        ]

    def gaps(self, end: float) -> list[GapTracker]:
        for cell in self._cells:
            cell.gaps.finish(end)
        return [c.gaps for c in self._cells]

    def _advance(self, cell: _Cell, tick: float, half_period: float, *, scale: bool) -> None:
        """Pick the pending frame nearest ``tick``; frames before it are consumed.

        A frame that arrives after its moment has been composed (a retransmission, a
        starved decoder) is dropped, never shown late: the picture freezes briefly
        instead of falling out of sync with the sound.
        """
        pending = cell.pending
        limit = bisect.bisect_right(pending, tick + half_period, key=lambda item: item[0])
        if limit == 0:
            return
        best = limit - 1
        if best > 0 and tick - pending[best - 1][0] < pending[best][0] - tick:
            best -= 1
        t, sequence, frame = pending[best]
        if t < tick - 3 * half_period:
            cell.frames_late += limit
            del pending[:limit]
            return
        cell.frames_skipped += best
        del pending[: best + 1]
        cell.shown = (t, sequence)
        cell.frames_shown += 1
        if scale:
            cell.scaled = self._scale(cell, frame)
            cell.source = frame

    def _scale(self, cell: _Cell, frame: av.VideoFrame) -> tuple[Rect, list[npt.NDArray[np.uint8]]]:
        """The picture for the cell and where it goes: fitted inside it (``contain``), or
        scaled to cover it and cropped to it around the centre (``cover``)."""
        rect = cell.rect
        if self.fit == "cover":
            width, height = rect.cover(frame.width, frame.height)
            target = rect
        else:
            target = rect.fit(frame.width, frame.height)
            width, height = target.width, target.height
        same = (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
        # A frame that already has that size is used as is: no swscale pass. The views
        # keep the decoded frame alive; decoders hand out a new frame every time.
        scaled = frame if same else cell.reformatter.reformat(frame, width, height, "yuv420p")
        # The crop: even offsets, so the chroma planes are cut at the same place.
        x, y = (width - target.width) // 4 * 2, (height - target.height) // 4 * 2
        planes = [
            np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)[
                :, : plane.width
            ]
            for plane in scaled.planes
        ]
        w, h = target.width, target.height
        planes[0] = planes[0][y : y + h, x : x + w]
        for i in (1, 2):
            planes[i] = planes[i][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
        return target, planes

    def _paint(self, cell: _Cell, picture: tuple[Rect, list[npt.NDArray[np.uint8]]]) -> None:
        if cell.painted is picture:
            return  # a frozen picture, or the same frame nearest two ticks
        rect, planes = picture
        if cell.painted is None or cell.painted[0] != rect:
            self._fill_black(cell.rect)  # letterbox bars of a new size or position
        cell.painted = picture
        y, u, v = self._planes
        y[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = planes[0]
        cx, cy, cw, ch = rect.x // 2, rect.y // 2, rect.width // 2, rect.height // 2
        u[cy : cy + ch, cx : cx + cw] = planes[1]
        v[cy : cy + ch, cx : cx + cw] = planes[2]

    def _fill_black(self, rect: Rect) -> None:
        y, u, v = self._planes
        y[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = BLACK_Y
        cx, cy, cw, ch = rect.x // 2, rect.y // 2, rect.width // 2, rect.height // 2
        u[cy : cy + ch, cx : cx + cw] = BLACK_UV
        v[cy : cy + ch, cx : cx + cw] = BLACK_UV
