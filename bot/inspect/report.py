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

Owns the ``Inspection`` (what decoding found, from ``bot.inspect.scan``, with the
manifest and the A/V offsets beside it), the A/V measure plug-in point (``Beep``,
``AV_MEASURE_ENTRY_POINTS``) and the text report. May import the foundation,
``bot.inspect``, ``bot.manifest``, ``bot.media.layout`` and ``bot.storage`` (the MP4 box
walker, to count fragments).

Everything here is blocking file and CPU work: call it from a thread in async code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Final

import av
import numpy as np

from bot.inspect.scan import CellInfo, Scan, Span, StreamInfo
from bot.manifest import Manifest
from bot.media.layout import Rect
from bot.storage.boxes import top_level_boxes

MAX_LISTED: Final = 12
"""Spans listed per line of the text report; the rest are counted."""
AV_MEASURE_ENTRY_POINTS: Final = "bot.inspect.av"


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
    cells_found: str = ""
    """How many cells, and how they were found (manifest, barcodes, speaker tracks)."""
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
    scan = Scan(path, manifest)
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
        cells_found=scan.cells_found,
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
        inspection.av_note = (
            "no synthetic barcode in the picture (a real consultation carries none): "
            "A/V offset not measurable"
        )
    return inspection


def _part_ends(manifest: Manifest) -> list[int]:
    assert manifest.storage is not None
    ends, total = [], 0
    for part in sorted(manifest.storage.parts, key=lambda p: p.number):
        total += part.size
        ends.append(total - 1)
    return ends


def _measure_av(path: Path, scan: Scan, measures: Sequence[AvMeasure]) -> list[AvSample]:
    """Each synthetic beep's A/V offset, named by the participant holding its cell or,
    without a manifest, by the synthetic participant's number and its cell."""
    cells = scan.cells()
    names = {
        number: cells[index].participant_id or f"participant {number} in {cells[index].label}"
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
    if ins.cells_found:
        yield f"  {ins.cells_found}"
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
