"""One demux-and-decode pass over a recording: what its pixels and samples show.

Owns the findings that come from decoding rather than from the recorder's word: each
stream's frames, span and holes, where each cell of the output grid went dark or froze,
where each audio track went silent, which cell holds a synthetic participant's barcode,
and the media time at a byte offset (for the upload parts). ``bot.inspect.report``
gathers these into the report. May import the foundation, ``bot.manifest`` (the slots),
``bot.media.layout`` (the grid) and ``bot.synthetic.signal`` (the barcode reader).

Where the cells are: the manifest's ``layout`` says where they are (for the speaker
layout, where they were at the start); an older manifest's slots say how many grid
cells the recorder drew.
Without a manifest (a copy of the file on its own) the grids of 1 to ``MAX_CELLS``
cells are all followed for the first ``BARCODE_PROBE_S`` and the one in whose cells the
synthetic barcodes read best is kept; with no barcode (a real consultation), the one
with a cell per speaker track, as the recorder writes them (the mix, then one track per
cell in cell order). The picture alone cannot tell two pictures side by side from one
wide one, nor a 2x2 grid from the quarters of a 2x1, so the count is not guessed from
how bright the cells are.

Everything here is blocking file and CPU work: call it from a thread in async code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
from numpy.typing import NDArray

from bot.manifest import Manifest
from bot.media.layout import Rect, grid
from bot.synthetic.signal import read_slot

MIN_SPAN_S: Final = 0.5
"""Dark, still, silent stretches shorter than this are not reported (a blink, a pause)."""
SILENCE_RMS: Final = 10 ** (-50 / 20)
"""Below -50 dBFS is silence: well under speech, above the AAC encoder's noise floor."""
DARK_LUMA: Final = 24.0
"""Mean luma (0-255) under which a cell counts as dark: the compositor's black is ~0."""
STILL_DIFF: Final = 0.25
"""Mean absolute luma change between frames under which a cell counts as frozen."""
ANALYSIS_SCALE: Final = 4
"""Cells are examined at a quarter of the output size: enough for dark and frozen."""
BARCODE_PROBE_S: Final = 10.0
"""How far into the file to look for the synthetic participants' barcode (and, without
a manifest, for the layout)."""
MAX_CELLS: Final = 6
"""The most cells tried when no manifest says how many there are."""


@dataclass(frozen=True)
class Span:
    """A stretch of the recording's timeline, in seconds from its start."""

    start: float
    end: float
    label: str = ""

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class StreamInfo:
    index: int
    kind: str
    codec: str
    title: str
    detail: str
    frames: int
    start: float
    end: float
    holes: tuple[Span, ...]
    """Timestamp jumps longer than two frames: time the file has no frame for."""
    silent: tuple[Span, ...] = ()
    """Audio only: stretches below ``SILENCE_RMS``."""


@dataclass(frozen=True)
class CellInfo:
    """One cell of the output grid, with who held it according to the manifest."""

    number: int
    rect: Rect
    participant_id: str | None
    role: str | None
    dark: tuple[Span, ...]
    still: tuple[Span, ...]
    """Frozen but not dark: the compositor holding a last picture, or a stuck source."""

    @property
    def label(self) -> str:
        who = " ".join(x for x in (self.role, self.participant_id) if x)
        return f"cell {self.number}" + (f" ({who})" if who else "")


class _SpanTracker:
    """Turns a per-frame yes/no into spans of at least ``MIN_SPAN_S``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.spans: list[Span] = []
        self._start: float | None = None
        self._end = 0.0

    def update(self, start: float, end: float, condition: bool) -> None:
        if condition:
            if self._start is None:
                self._start = start
            self._end = end
        else:
            self.close()

    def close(self) -> None:
        if self._start is not None and self._end - self._start >= MIN_SPAN_S:
            self.spans.append(Span(round(self._start, 3), round(self._end, 3), self.label))
        self._start = None


@dataclass
class _StreamState:
    stream: Any
    kind: str
    frames: int = 0
    start: float | None = None
    end: float = 0.0
    holes: list[Span] = field(default_factory=list)
    silence: _SpanTracker = field(default_factory=lambda: _SpanTracker("silent"))

    def frame(self, start: float, length: float) -> None:
        if self.start is None:
            self.start = start
        elif start - self.end > 2 * length:
            self.holes.append(Span(round(self.end, 3), round(start, 3), "no frames"))
        self.end = max(self.end, start + length)
        self.frames += 1


@dataclass
class _CellState:
    """Dark and frozen stretches of one rectangle of the picture."""

    dark: _SpanTracker = field(default_factory=lambda: _SpanTracker("dark"))
    still: _SpanTracker = field(default_factory=lambda: _SpanTracker("frozen"))
    previous: NDArray[np.float32] | None = None

    def update(self, cell: NDArray[np.float32], start: float, end: float) -> None:
        dark = float(cell.mean()) < DARK_LUMA
        self.dark.update(start, end, dark)
        previous = self.previous
        still = (
            not dark and previous is not None and float(np.abs(cell - previous).mean()) < STILL_DIFF
        )
        self.still.update(start, end, still)
        self.previous = cell


class Scan:
    """One demux-and-decode pass over every stream of the file."""

    def __init__(self, path: Path, manifest: Manifest | None) -> None:
        self.path = path
        self.manifest = manifest
        self.duration = 0.0
        self.width = 0
        self.height = 0
        self.streams: list[StreamInfo] = []
        self.speakers: list[str] = []
        """Titles of the speaker tracks, in cell order, if the file has the recorder's."""
        self.rects: list[Rect] = []
        """The cells, once the layout is settled."""
        self.cells_found = ""
        """How the cells were found, for the report."""
        self._candidates: dict[int, list[Rect]] = {}
        """Cell count -> its grid: the layouts still in question."""
        self._readings: dict[int, dict[int, int]] = {}
        """Cell count -> synthetic participant number -> cell index where it was read."""
        self._reads: dict[int, int] = {}
        """Cell count -> barcodes read in its cells: how well that grid fits the picture."""
        self._cell_states: dict[Rect, _CellState] = {}
        self._positions: list[tuple[int, float]] = []
        self._next_probe = 0.0

    @property
    def barcode_cells(self) -> dict[int, int]:
        """Synthetic participant number -> cell index where its barcode was read."""
        return self._readings.get(len(self.rects), {}) if self.rects else {}

    def run(self) -> None:
        with av.open(str(self.path)) as container:
            self.duration = (container.duration or 0) / av.time_base
            states = {s.index: _StreamState(s, s.type) for s in container.streams}
            self.speakers = _speaker_titles(container.streams.audio)
            video = container.streams.video[0] if container.streams.video else None
            if video is not None:
                self.width = video.codec_context.width
                self.height = video.codec_context.height
                self._start_layouts()
            for packet in container.demux():
                state = states[packet.stream.index]
                if packet.pos is not None and packet.pos >= 0 and packet.pts is not None:
                    self._positions.append((packet.pos, float(packet.pts * packet.time_base)))
                for frame in packet.decode():
                    if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                        continue
                    if frame.pts is None or frame.time_base is None:
                        continue
                    start = float(frame.pts * frame.time_base)
                    if isinstance(frame, av.VideoFrame):
                        self._video_frame(state, frame, start)
                    else:
                        self._audio_frame(state, frame, start)
            if self._candidates and not self.rects:
                self._settle_layout()
            self.streams = [self._stream_info(s) for s in states.values()]

    def _slots(self) -> list[dict[str, Any]]:
        if self.manifest is None:
            return []
        slots = self.manifest.sync.get("slots", [])
        return [s for s in slots if isinstance(s, dict)]

    def _start_layouts(self) -> None:
        """The grids in question: the manifest's, or every one from 1 to ``MAX_CELLS``."""
        count = len(self._slots())
        counts = [count] if count else range(1, MAX_CELLS + 1)
        self._candidates = {n: grid(n, self.width, self.height) for n in counts}
        layout = self.manifest.layout if self.manifest is not None else None
        if layout is not None and layout.cells:
            count = len(layout.cells)
            cells = [Rect(c.x, c.y, c.width, c.height) for c in layout.cells]
            self._candidates = {count: cells}
        for rects in self._candidates.values():
            for rect in rects:
                self._cell_states.setdefault(rect, _CellState())
        if count:
            self._settle_layout()

    def _settle_layout(self) -> None:
        """Keep the grid whose cells read the most barcodes; on a tie, the one with a cell
        per speaker track, then the fewest cells."""
        hint = len(self.speakers)
        count = max(self._candidates, key=lambda n: (self._reads.get(n, 0), n == hint, -n))
        self.rects = self._candidates[count]
        self._cell_states = {rect: self._cell_states[rect] for rect in self.rects}
        if self.manifest is not None and self.manifest.layout is not None:
            how = f"from the manifest's layout ({self.manifest.layout.mode})"
        elif self._slots():
            how = "from the manifest's slots"
        elif self._reads.get(count):
            how = "found by the synthetic barcodes in the picture"
        elif count == hint:
            how = "one per speaker track (no synthetic barcode in the picture)"
        else:
            how = "the whole picture (no manifest, barcode or speaker tracks to tell them)"
        self.cells_found = f"{count} {'cell' if count == 1 else 'cells'}, {how}"

    def _video_frame(self, state: _StreamState, frame: Any, start: float) -> None:
        rate = state.stream.guessed_rate or state.stream.average_rate or 30
        length = float(1 / Fraction(rate))
        state.frame(start, length)
        if not self.rects and start >= BARCODE_PROBE_S:
            self._settle_layout()
        small = frame.reformat(
            width=max(2, self.width // ANALYSIS_SCALE),
            height=max(2, self.height // ANALYSIS_SCALE),
            format="gray",
        ).to_ndarray()
        # Until the layout is settled, every candidate grid's cells are followed.
        for rect, cell in self._cell_states.items():
            crop = small[
                rect.y // ANALYSIS_SCALE : (rect.y + rect.height) // ANALYSIS_SCALE,
                rect.x // ANALYSIS_SCALE : (rect.x + rect.width) // ANALYSIS_SCALE,
            ]
            cell.update(crop.astype(np.float32), start, start + length)
        if start >= self._next_probe and start < BARCODE_PROBE_S:
            self._next_probe = start + 0.5
            self._probe_barcodes(frame)

    def _probe_barcodes(self, frame: Any) -> None:
        luma = frame.to_ndarray(format="gray")
        participant: dict[Rect, int | None] = {}
        for rect in self._cell_states:
            crop = luma[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
            participant[rect] = read_slot(crop).participant
        for count, rects in self._candidates.items():
            readings = self._readings.setdefault(count, {})
            for i, rect in enumerate(rects):
                number = participant.get(rect)
                if number is not None:
                    readings.setdefault(number, i)
                    self._reads[count] = self._reads.get(count, 0) + 1

    def _audio_frame(self, state: _StreamState, frame: Any, start: float) -> None:
        rate = frame.sample_rate or 48000
        length = frame.samples / rate
        state.frame(start, length)
        decoded = frame.to_ndarray()
        samples = decoded.astype(np.float32)
        if np.issubdtype(decoded.dtype, np.integer):
            samples /= float(np.iinfo(decoded.dtype).max)
        rms = float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0
        state.silence.update(start, start + length, rms < SILENCE_RMS)

    def _stream_info(self, state: _StreamState) -> StreamInfo:
        stream = state.stream
        ctx = stream.codec_context
        title = _title(stream)
        if state.kind == "video":
            rate = stream.guessed_rate or stream.average_rate
            detail = f"{ctx.width}x{ctx.height} @ {float(rate or 0):g} fps"
        elif state.kind == "audio":
            layout = getattr(ctx.layout, "name", "")
            detail = f"{ctx.sample_rate} Hz {layout}".rstrip()
        else:
            detail = ""
        state.silence.close()
        return StreamInfo(
            index=stream.index,
            kind=state.kind,
            codec=ctx.name if ctx is not None else "?",
            title=title,
            detail=detail,
            frames=state.frames,
            start=round(state.start or 0.0, 3),
            end=round(state.end, 3),
            holes=tuple(state.holes),
            silent=tuple(state.silence.spans) if state.kind == "audio" else (),
        )

    def cells(self) -> list[CellInfo]:
        """The settled layout's cells, named by the manifest's slots or else, when there
        is one per cell, by the speaker tracks' titles (the roles)."""
        slots = self._slots()
        roles = self.speakers if len(self.speakers) == len(self.rects) else []
        out = []
        for i, rect in enumerate(self.rects):
            state = self._cell_states[rect]
            state.dark.close()
            state.still.close()
            slot = slots[i] if i < len(slots) else {}
            out.append(
                CellInfo(
                    number=i + 1,
                    rect=rect,
                    participant_id=slot.get("participant") or None,
                    role=slot.get("role") or (roles[i] if roles else None),
                    dark=tuple(state.dark.spans),
                    still=tuple(state.still.spans),
                )
            )
        return out

    def byte_times(self, offsets: Sequence[int]) -> list[float]:
        """Media time of each byte offset, from where the demuxer found packets."""
        if not self._positions or not offsets:
            return []
        points = sorted(self._positions)
        pos = np.array([p for p, _ in points], dtype=np.float64)
        # Fragments interleave streams; the running maximum keeps time monotonic.
        times = np.maximum.accumulate(np.array([t for _, t in points], dtype=np.float64))
        return [round(float(t), 3) for t in np.interp(np.asarray(offsets, float), pos, times)]


def _title(stream: Any) -> str:
    return str(stream.metadata.get("handler_name", "") or stream.metadata.get("title", ""))


def _speaker_titles(audio: Sequence[Any]) -> list[str]:
    """The speaker tracks' titles if the file is laid out as the recorder writes it (the
    mix first, then one track per cell in cell order), else none."""
    titles = [_title(stream) for stream in audio]
    return titles[1:] if titles and titles[0] == "mix" else []
