"""A recording's timeline as a picture, so a person sees at a glance what happened.

One lane per participant and kind (video, audio), in time from the start of the file:
green where media was recorded, shaded where the recorder filled a gap (a late join, a
loss or a leave, a pause), and thin strips under each lane where decoding found the
picture dark or frozen or the participant's audio silent. A lane for the mixed audio, a
lane of upload-part ticks (where each part's last byte lies in media time) and, when
the synthetic participants' barcode was in the picture, the A/V offset at every beep.

Drawn with matplotlib's Agg canvas on a private ``Figure`` (no pyplot, no global state),
so it is safe off the main thread. matplotlib is the optional ``inspect`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bot.inspect.report import Inspection
from bot.inspect.scan import Span

if TYPE_CHECKING:
    from matplotlib.axes import Axes

WIDTH_PX: Final = 1400
DPI: Final = 100
LANE_IN: Final = 0.45
MARGIN_IN: Final = 1.25
AV_PANEL_IN: Final = 2.4

MEDIA: Final = "#3a9d5d"
GAP_COLORS: Final = {
    "paused": "#6b8fd6",
    "no media yet": "#c8c8c8",
    "no media": "#e8893a",
}
DARK: Final = "#202020"
FROZEN: Final = "#9b59b6"
SILENT: Final = "#b03a2e"
PART: Final = "#1f4e79"

AV_TARGET_S: Final = 0.020
"""The project's p95 A/V target, drawn as a band."""
AV_DETECTABLE_S: Final = (0.045, -0.125)
"""Broadcast detectability thresholds (picture late, picture early), drawn as lines."""
AV_LINE_MAX_GAP_S: Final = 1.5
"""Beeps are 1 s apart: a longer step means unmeasured beeps, so the line breaks."""


class TimelineUnavailable(RuntimeError):
    """The picture cannot be drawn here (matplotlib is not installed)."""


@dataclass(frozen=True)
class LaneBox:
    """Where a lane was drawn in the PNG, in pixels from the top-left corner."""

    label: str
    top: int
    bottom: int
    left: int
    right: int


@dataclass(frozen=True)
class Lane:
    label: str
    media: bool = True
    """Draw the recorded span (False for lanes that only carry ticks)."""
    gaps: tuple[Span, ...] = ()
    """Filled by the recorder; the span's label is the manifest's reason."""
    strips: tuple[tuple[Span, str], ...] = ()
    """Found by decoding, with their colour."""
    ticks: tuple[float, ...] = ()


@dataclass(frozen=True)
class Timeline:
    path: Path
    width: int
    height: int
    lanes: tuple[LaneBox, ...]
    av_panel: bool


def expected_size(lanes: int, av_panel: bool) -> tuple[int, int]:
    """(width, height) in pixels of a timeline with this many lanes."""
    height_in = MARGIN_IN + LANE_IN * lanes + (AV_PANEL_IN if av_panel else 0.0)
    return WIDTH_PX, round(height_in * DPI)


def default_png_path(recording: Path) -> Path:
    """``<file>.timeline.png`` beside the recording."""
    return recording.with_name(recording.name + ".timeline.png")


def build_lanes(ins: Inspection) -> list[Lane]:
    """The lanes, top to bottom: per participant video then audio, mix, upload parts."""
    lanes: list[Lane] = []
    audio_by_title = {s.title: s for s in ins.streams if s.kind == "audio"}
    manifest = ins.manifest
    if manifest is not None and manifest.participants:
        for p in manifest.participants:
            cell = next((c for c in ins.cells if c.participant_id == p.id), None)
            for kind in ("video", "audio"):
                gaps = tuple(
                    Span(g.start, g.end, g.reason)
                    for g in manifest.gaps
                    if g.participant_id == p.id and g.kind in (kind, "both")
                )
                strips: list[tuple[Span, str]] = []
                if kind == "video" and cell is not None:
                    strips += [(s, DARK) for s in cell.dark] + [(s, FROZEN) for s in cell.still]
                stream = audio_by_title.get(p.role)
                if kind == "audio" and stream is not None:
                    strips += [(s, SILENT) for s in stream.silent]
                lanes.append(Lane(f"{p.role} {p.id} · {kind}", True, gaps, tuple(strips)))
    else:
        for cell in ins.cells:
            strips = [(s, DARK) for s in cell.dark] + [(s, FROZEN) for s in cell.still]
            lanes.append(Lane(f"video {cell.label}", True, (), tuple(strips)))
        for s in ins.streams:
            if s.kind == "audio" and s.title != "mix":
                lanes.append(Lane(f"audio {s.title or s.index}", True, (), _silent(s.silent)))
    mix = audio_by_title.get("mix")
    if mix is not None:
        lanes.append(Lane("mixed audio", True, (), _silent(mix.silent)))
    if ins.part_ends:
        lanes.append(Lane("upload parts", media=False, ticks=tuple(ins.part_ends)))
    return lanes


def _silent(spans: Sequence[Span]) -> tuple[tuple[Span, str], ...]:
    return tuple((s, SILENT) for s in spans)


def gap_color(reason: str) -> str:
    for prefix in ("paused", "no media yet", "no media"):
        if reason.startswith(prefix):
            return GAP_COLORS[prefix]
    return GAP_COLORS["no media"]


def render_timeline(ins: Inspection, png: Path) -> Timeline:
    """Draw ``ins`` into ``png`` and say where each lane landed."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise TimelineUnavailable(
            "drawing the timeline needs matplotlib: pip install 'consultation-recorder[inspect]'"
        ) from None
    lanes = build_lanes(ins)
    av_panel = bool(ins.av_offsets)
    width, height = expected_size(len(lanes), av_panel)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    lanes_h = LANE_IN * len(lanes)
    total_h = height / DPI
    bottom_in = 0.55 + (AV_PANEL_IN if av_panel else 0.0)
    ax = fig.add_axes(
        (0.2, bottom_in / total_h, 0.76, lanes_h / total_h),
    )
    end = max(ins.duration, 0.1)
    _draw_lanes(ax, lanes, end)
    ax.set_title(_title(ins), fontsize=10, loc="left")
    legend = [
        Patch(color=MEDIA, label="recorded"),
        Patch(color=GAP_COLORS["no media yet"], label="not yet joined"),
        Patch(color=GAP_COLORS["no media"], label="lost / muted / left"),
        Patch(color=GAP_COLORS["paused"], label="paused"),
        Patch(color=DARK, label="decoded: dark"),
        Patch(color=FROZEN, label="decoded: frozen"),
        Patch(color=SILENT, label="decoded: silent"),
    ]
    fig.legend(
        handles=legend,
        loc="upper center",
        ncol=len(legend),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.58, 1.0),
    )
    if av_panel:
        av_ax = fig.add_axes((0.2, 0.45 / total_h, 0.76, (AV_PANEL_IN - 0.7) / total_h))
        _draw_av(av_ax, ins, end)
    else:
        ax.set_xlabel("seconds from the start of the recording")
    png.parent.mkdir(parents=True, exist_ok=True)
    # Axes sit at fixed figure fractions with fixed limits: data -> pixels needs no draw.
    boxes = []
    for i, lane in enumerate(lanes):
        (x0, y0), (x1, y1) = ax.transData.transform([(0.0, i - 0.4), (end, i + 0.4)])
        top, bottom = sorted((round(height - y0), round(height - y1)))
        boxes.append(LaneBox(lane.label, top, bottom, round(x0), round(x1)))
    fig.savefig(png, dpi=DPI, format="png")
    return Timeline(png, width, height, tuple(boxes), av_panel)


def _title(ins: Inspection) -> str:
    m = ins.manifest
    who = f"consultation {m.consultation_id} · recording {m.recording_id}" if m else ins.path.name
    return f"{who} · {ins.duration:.1f} s · {ins.fragments} fragments"


def _draw_lanes(ax: Axes, lanes: Sequence[Lane], end: float) -> None:
    # Lane i occupies y in [i - 0.4, i + 0.4]; the top lane is drawn first (inverted axis).
    for i, lane in enumerate(lanes):
        if lane.media:
            ax.broken_barh([(0.0, end)], (i - 0.4, 0.55), color=MEDIA)
        for gap in lane.gaps:
            ax.broken_barh(
                [(gap.start, max(gap.length, 0.01))], (i - 0.4, 0.55), color=gap_color(gap.label)
            )
        for span, color in lane.strips:
            ax.broken_barh([(span.start, max(span.length, 0.01))], (i + 0.2, 0.2), color=color)
        for n, tick in enumerate(lane.ticks, start=1):
            ax.vlines(tick, i - 0.4, i + 0.4, color=PART, linewidth=2)
            ax.text(tick, i - 0.45, str(n), fontsize=7, ha="center", va="bottom", color=PART)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_yticks(range(len(lanes)), [lane.label for lane in lanes], fontsize=8)
    ax.set_xlim(0.0, end)
    ax.grid(axis="x", alpha=0.3)


def _draw_av(ax: Axes, ins: Inspection, end: float) -> None:
    ax.axhspan(-AV_TARGET_S * 1000, AV_TARGET_S * 1000, color=MEDIA, alpha=0.15, lw=0)
    for limit in AV_DETECTABLE_S:
        ax.axhline(limit * 1000, color="#b03a2e", linestyle="--", linewidth=0.8)
    names = sorted({s.participant for s in ins.av_offsets})
    for name in names:
        times: list[float] = []
        offsets: list[float] = []
        for sample in (s for s in ins.av_offsets if s.participant == name):
            if times and sample.time - times[-1] > AV_LINE_MAX_GAP_S:
                times.append(math.nan)  # no line across beeps that were not measured
                offsets.append(math.nan)
            times.append(sample.time)
            offsets.append(sample.offset * 1000)
        ax.plot(times, offsets, marker="o", markersize=3, linewidth=1, label=name)
    ax.set_xlim(0.0, end)
    ax.set_ylabel("A/V offset, ms\n(+ picture late)", fontsize=8)
    ax.set_xlabel("seconds from the start of the recording")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
