"""What is in a recording, read back with PyAV: the check a person runs on a file.

``summarize`` is the one line the demo prints. ``inspect_recording`` decodes the whole
file once and says what a person would want to know after a consultation: the streams,
the fragments, where each participant's picture went dark or froze and where each audio
track went silent (found in the pixels and samples, not taken from the recorder's word),
and, when the manifest is next to the file, what the recorder itself reported: the
participants, the gaps it filled, its sync figures and the upload parts. When the
synthetic participants' barcode is in the picture, the A/V offset is measured over time
by whatever measure is installed under the ``bot.inspect.av`` entry points (the testbed's
analysis of the synthetic beep), so the product does not carry the test signal's analysis.
``bot.inspect.timeline_png`` draws the same findings.

Everything here is blocking file and CPU work: call it from a thread in async code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
from numpy.typing import NDArray

from bot.manifest import Manifest
from bot.media.layout import Rect, grid
from bot.storage.boxes import top_level_boxes
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
"""How far into the file to look for the synthetic participants' barcode."""
MAX_LISTED: Final = 12
"""Spans listed per line of the text report; the rest are counted."""
AV_MEASURE_ENTRY_POINTS: Final = "bot.inspect.av"


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


@dataclass(frozen=True)
class Beep:
    """What an A/V measure reports for one beep of synthetic participant ``participant``."""

    participant: int
    audio_onset_s: float
    av_offset_s: float


AvMeasure = Callable[[Path, Sequence[Rect]], Iterable[Beep]]
"""Given the file and its cells, every beep it could match picture to sound for."""


@dataclass(frozen=True)
class AvSample:
    """One beep of a synthetic participant: when it was, and picture minus sound."""

    participant: str
    time: float
    offset: float


@dataclass
class Inspection:
    path: Path
    size: int
    duration: float
    fragments: int
    width: int
    height: int
    streams: list[StreamInfo]
    cells: list[CellInfo]
    av_offsets: list[AvSample] = field(default_factory=list)
    av_note: str = ""
    manifest: Manifest | None = None
    manifest_path: Path | None = None
    part_ends: list[float] = field(default_factory=list)
    """Media time at which each upload part's last byte lies (from packet positions)."""

    def report(self) -> str:
        return "\n".join(_report_lines(self))


def summarize(path: Path) -> str:
    """One line: duration, streams, size, fragments."""
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / av.time_base
        streams = []
        for stream in container.streams:
            if isinstance(stream, av.VideoStream):
                ctx = stream.codec_context
                rate = stream.guessed_rate or stream.average_rate
                streams.append(f"video {ctx.name} {ctx.width}x{ctx.height}@{rate}")
            elif isinstance(stream, av.AudioStream):
                label = stream.metadata.get("handler_name", "")
                streams.append(f"audio {stream.codec_context.name} {label}".rstrip())
    size = path.stat().st_size
    fragments = sum(box.kind == b"moof" for box in top_level_boxes(path))
    return f"{path}: {duration:.2f}s, {size / 1e6:.2f} MB, {fragments} fragments; " + "; ".join(
        streams
    )


def manifest_beside(path: Path) -> Path | None:
    """``<file>.manifest.json``, where the recorder and the demo leave it, if present."""
    candidate = path.with_name(path.name + ".manifest.json")
    return candidate if candidate.is_file() else None


def inspect_recording(path: Path, manifest_path: Path | None = None) -> Inspection:
    """Decode ``path`` once and gather the report; the manifest defaults to the one beside.

    Raises ``OSError`` for an unreadable file, ``av.error.FFmpegError`` for one that is not
    media, and ``pydantic.ValidationError`` for a manifest that is not one.
    """
    manifest_path = manifest_path or manifest_beside(path)
    manifest = Manifest.from_json(manifest_path.read_bytes()) if manifest_path is not None else None
    scan = _Scan(path, manifest)
    scan.run()
    inspection = Inspection(
        path=path,
        size=path.stat().st_size,
        duration=scan.duration,
        fragments=sum(box.kind == b"moof" for box in top_level_boxes(path)),
        width=scan.width,
        height=scan.height,
        streams=scan.streams,
        cells=scan.cells(),
        manifest=manifest,
        manifest_path=manifest_path,
    )
    if manifest is not None and manifest.storage is not None:
        inspection.part_ends = scan.byte_times(_part_ends(manifest))
    measures = [entry.load() for entry in entry_points(group=AV_MEASURE_ENTRY_POINTS)]
    if scan.barcode_cells and measures:
        inspection.av_offsets = _measure_av(path, scan, measures)
        inspection.av_note = "synthetic barcode found: A/V offset measured at every beep"
    elif scan.barcode_cells:
        inspection.av_note = (
            "synthetic barcode found, but no A/V measure is installed "
            "(the testbed's: pip install -e ./testbed)"
        )
    else:
        inspection.av_note = "no synthetic barcode in the picture: A/V offset not measurable"
    return inspection


def inspect_file(path: Path, manifest_path: Path | None = None) -> str:
    """The one-line summary and the full text report."""
    return summarize(path) + "\n" + inspect_recording(path, manifest_path).report()


# -- decoding --------------------------------------------------------------------------


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


class _Scan:
    """One demux-and-decode pass over every stream of the file."""

    def __init__(self, path: Path, manifest: Manifest | None) -> None:
        self.path = path
        self.manifest = manifest
        self.duration = 0.0
        self.width = 0
        self.height = 0
        self.streams: list[StreamInfo] = []
        self.rects: list[Rect] = []
        self.barcode_cells: dict[int, int] = {}
        """Synthetic participant number -> cell index where its barcode was read."""
        self._dark: list[_SpanTracker] = []
        self._still: list[_SpanTracker] = []
        self._previous: list[NDArray[np.float32] | None] = []
        self._positions: list[tuple[int, float]] = []
        self._next_probe = 0.0

    def run(self) -> None:
        with av.open(str(self.path)) as container:
            self.duration = (container.duration or 0) / av.time_base
            states = {s.index: _StreamState(s, s.type) for s in container.streams}
            video = container.streams.video[0] if container.streams.video else None
            if video is not None:
                self.width = video.codec_context.width
                self.height = video.codec_context.height
                self._layout(len(self._slots()) or 1)
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
            self.streams = [self._stream_info(s) for s in states.values()]

    def _slots(self) -> list[dict[str, Any]]:
        if self.manifest is None:
            return []
        slots = self.manifest.sync.get("slots", [])
        return [s for s in slots if isinstance(s, dict)]

    def _layout(self, count: int) -> None:
        self.rects = grid(count, self.width, self.height)
        self._dark = [_SpanTracker("dark") for _ in self.rects]
        self._still = [_SpanTracker("frozen") for _ in self.rects]
        self._previous = [None for _ in self.rects]

    def _video_frame(self, state: _StreamState, frame: Any, start: float) -> None:
        rate = state.stream.guessed_rate or state.stream.average_rate or 30
        length = float(1 / Fraction(rate))
        state.frame(start, length)
        small = frame.reformat(
            width=max(2, self.width // ANALYSIS_SCALE),
            height=max(2, self.height // ANALYSIS_SCALE),
            format="gray",
        ).to_ndarray()
        for i, rect in enumerate(self.rects):
            cell = small[
                rect.y // ANALYSIS_SCALE : (rect.y + rect.height) // ANALYSIS_SCALE,
                rect.x // ANALYSIS_SCALE : (rect.x + rect.width) // ANALYSIS_SCALE,
            ].astype(np.float32)
            dark = float(cell.mean()) < DARK_LUMA
            self._dark[i].update(start, start + length, dark)
            previous = self._previous[i]
            still = (
                not dark
                and previous is not None
                and float(np.abs(cell - previous).mean()) < STILL_DIFF
            )
            self._still[i].update(start, start + length, still)
            self._previous[i] = cell
        if start >= self._next_probe and start < BARCODE_PROBE_S:
            self._next_probe = start + 0.5
            self._probe_barcode(frame)

    def _probe_barcode(self, frame: Any) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        for i, rect in enumerate(self.rects):
            crop = rgb[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
            reading = read_slot(crop)
            if reading.participant is not None:
                self.barcode_cells.setdefault(reading.participant, i)

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
        title = stream.metadata.get("handler_name", "") or stream.metadata.get("title", "")
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
        slots = self._slots()
        out = []
        for i, rect in enumerate(self.rects):
            self._dark[i].close()
            self._still[i].close()
            slot = slots[i] if i < len(slots) else {}
            out.append(
                CellInfo(
                    number=i + 1,
                    rect=rect,
                    participant_id=slot.get("participant") or None,
                    role=slot.get("role") or None,
                    dark=tuple(self._dark[i].spans),
                    still=tuple(self._still[i].spans),
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


def _part_ends(manifest: Manifest) -> list[int]:
    assert manifest.storage is not None
    ends, total = [], 0
    for part in sorted(manifest.storage.parts, key=lambda p: p.number):
        total += part.size
        ends.append(total - 1)
    return ends


def _measure_av(path: Path, scan: _Scan, measures: Sequence[AvMeasure]) -> list[AvSample]:
    """Each synthetic beep's A/V offset, named by the participant holding its cell."""
    cells = scan.cells()
    names = {
        number: cells[index].participant_id or f"participant {number}"
        for number, index in scan.barcode_cells.items()
    }
    beeps = (beep for measure in measures for beep in measure(path, list(scan.rects)))
    return [
        AvSample(
            names.get(beep.participant, f"participant {beep.participant}"),
            round(beep.audio_onset_s, 3),
            round(beep.av_offset_s, 4),
        )
        for beep in sorted(beeps, key=lambda b: (b.participant, b.audio_onset_s))
    ]


# -- the text report -------------------------------------------------------------------


def _spans(spans: Sequence[Span]) -> str:
    if not spans:
        return "none"
    shown = [f"{s.start:.2f}-{s.end:.2f} s" for s in spans[:MAX_LISTED]]
    more = len(spans) - MAX_LISTED
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _report_lines(ins: Inspection) -> Iterator[str]:
    yield f"file: {ins.path}"
    yield (
        f"  {ins.duration:.2f} s, {ins.size / 1e6:.2f} MB, {ins.fragments} fragments"
        + (" (fragmented MP4)" if ins.fragments else " (not fragmented)")
    )
    yield "streams:"
    for s in ins.streams:
        title = f' "{s.title}"' if s.title else ""
        yield (
            f"  #{s.index} {s.kind} {s.codec}{title} {s.detail}: {s.frames} frames, "
            f"{s.start:.2f}-{s.end:.2f} s; holes: {_spans(s.holes)}"
        )
    yield "found by decoding:"
    for c in ins.cells:
        yield f"  video {c.label}: dark {_spans(c.dark)}; frozen {_spans(c.still)}"
    for s in ins.streams:
        if s.kind == "audio":
            yield f'  audio #{s.index} "{s.title}": silent {_spans(s.silent)}'
    yield f"A/V offset: {ins.av_note}"
    by_participant: dict[str, list[float]] = {}
    for sample in ins.av_offsets:
        by_participant.setdefault(sample.participant, []).append(sample.offset * 1000)
    for name, offsets in sorted(by_participant.items()):
        values = np.asarray(offsets)
        yield (
            f"  {name}: {len(values)} beeps, median {float(np.median(values)):+.1f} ms, "
            f"worst {float(values[np.argmax(np.abs(values))]):+.1f} ms "
            "(positive: picture late)"
        )
    if ins.manifest is None:
        yield "manifest: none beside the file (pass --manifest PATH)"
        return
    yield from _manifest_lines(ins.manifest, ins.manifest_path, ins.part_ends)


def _manifest_lines(m: Manifest, path: Path | None, part_ends: Sequence[float]) -> Iterator[str]:
    yield f"manifest: {path}"
    duration = f"{m.duration_seconds:.2f} s" if m.duration_seconds is not None else "unfinished"
    yield (
        f"  consultation {m.consultation_id}, recording {m.recording_id}, "
        f"recorder {m.recorder_version}, {duration}"
        + (", finished by `bot recover`" if m.recovered else "")
    )
    ended = m.ended_at.isoformat() if m.ended_at else "-"
    yield f"  started {m.started_at.isoformat()}, ended {ended}"
    yield "  participants: " + (", ".join(f"{p.id} ({p.role})" for p in m.participants) or "none")
    for p in m.participants:
        kinds = sorted({t.kind for t in m.tracks if t.participant_id == p.id})
        yield f"    {p.id}: tracks {', '.join(kinds) or 'none'}"
    yield f"  gaps filled by the recorder ({len(m.gaps)}):"
    for g in m.gaps[: MAX_LISTED * 2]:
        who = g.participant_id or "everyone"
        yield f"    {who} {g.kind} {g.start:.2f}-{g.end:.2f} s: {g.reason}"
    if len(m.gaps) > MAX_LISTED * 2:
        yield f"    and {len(m.gaps) - MAX_LISTED * 2} more"
    yield "  sync:"
    for track in m.sync.get("tracks", []):
        if isinstance(track, dict):
            yield (
                f"    {track.get('participant')} {track.get('kind')}: clock "
                f"{track.get('clock')}, {track.get('sender_reports', 0)} sender reports, "
                f"{track.get('packets', 0)} packets, {track.get('frames', 0)} frames"
            )
    for key in ("video_frames", "video_frames_dropped_in_queue", "audio_frames_dropped_in_queue"):
        if key in m.sync:
            yield f"    {key.replace('_', ' ')}: {m.sync[key]}"
    storage = m.storage
    if storage is None:
        yield "  storage: not verified (no storage block)"
        return
    where = f"s3://{storage.bucket}/" if storage.bucket else "local:"
    yield f"  storage: {where}{storage.object_key}"
    yield (
        f"    {storage.size} bytes, sha256 {storage.sha256[:16]}..., encryption "
        f"{storage.encryption}, part size {storage.part_size}"
    )
    v = storage.verification
    checks = "ok" if v.size_ok and v.decode_start_ok and v.decode_end_ok else "FAILED"
    yield (
        f"    verified {v.verified_at.isoformat()} in {v.seconds:.2f} s: {checks} "
        f"(size, decode start/end), etag {v.etag}, sha256 by {v.sha256_method}"
    )
    yield f"    upload parts ({len(storage.parts)}):"
    for i, part in enumerate(sorted(storage.parts, key=lambda p: p.number)):
        at = f", ends at {part_ends[i]:.2f} s of media" if i < len(part_ends) else ""
        yield f"      part {part.number}: {part.size} bytes{at}"
