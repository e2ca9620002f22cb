"""The timeline picture of the review page: an SVG drawn from the manifest alone.

One row per participant (its role and opaque id), a video lane above an audio lane,
green where media was recorded and each gap of the manifest drawn over it in its
reason's colour (pauses, consent withdrawn or pending, encrypted, no media), consent
changes as markers, the end-to-end encryption changes on the axis, and an axis in
seconds from the start with the wall-clock time (UTC) under it. Every gap is exactly
one ``<rect class="gap">`` carrying its reason, kind, participant and times, so what
the picture shows can be counted against the manifest (the browser test does).

SVG rather than a PNG (``bot inspect`` draws one with matplotlib): it needs no decoding
of the media, scales with the page, carries a tooltip per gap, and adds no dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import Final

from bot.manifest import Gap, Manifest

WIDTH: Final = 960
LABEL_W: Final = 190
RIGHT_PAD: Final = 36
TOP: Final = 26
LANE_H: Final = 14
ROW_H: Final = 2 * LANE_H + 12
AXIS_H: Final = 40
LEGEND_H: Final = 26
MIN_GAP_PX: Final = 2.0
"""A gap shorter than a pixel is still drawn, so none is lost at a long recording's scale."""

MEDIA_COLOR: Final = "#3a9d5d"
REASON_COLORS: Final = (
    ("paused", "#6b8fd6"),
    ("consent_withdrawn", "#b03a2e"),
    ("consent_pending", "#d4a017"),
    ("encrypted", "#7d3c98"),
    ("no media yet", "#c8c8c8"),
    ("no media", "#e8893a"),
)
OTHER_COLOR: Final = "#e8893a"
TICK_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


def reason_color(reason: str) -> str:
    """The colour of a gap's reason (by prefix: reasons may carry detail after it)."""
    for prefix, color in REASON_COLORS:
        if reason.startswith(prefix):
            return color
    return OTHER_COLOR


@dataclass(frozen=True)
class _Row:
    participant_id: str | None
    label: str
    y: float


def duration_of(manifest: Manifest) -> float:
    """The recording's length in seconds, or the latest event's when the manifest has none."""
    ends = [g.end for g in manifest.gaps] + [c.at for c in manifest.consent]
    return max(manifest.duration_seconds or 0.0, *ends, 1.0)


def _rows(manifest: Manifest) -> list[_Row]:
    """Participants in manifest order, then ids only gaps or consent name, then "everyone"
    for gaps that belong to nobody in particular."""
    ids: list[str | None] = [p.id for p in manifest.participants]
    roles = {p.id: p.role for p in manifest.participants}
    for pid in [g.participant_id for g in manifest.gaps] + [
        c.participant_id for c in manifest.consent
    ]:
        if pid is not None and pid not in ids:
            ids.append(pid)
    if any(g.participant_id is None for g in manifest.gaps):
        ids.append(None)
    rows = []
    for n, pid in enumerate(ids):
        label = "everyone" if pid is None else f"{roles.get(pid, 'participant')} · {pid}"
        rows.append(_Row(pid, label, TOP + n * ROW_H))
    return rows


class _Scale:
    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.span = WIDTH - LABEL_W - RIGHT_PAD

    def x(self, t: float) -> float:
        return LABEL_W + self.span * min(max(t, 0.0), self.duration) / self.duration


def timeline_svg(manifest: Manifest) -> str:
    """The whole picture as an inline ``<svg>`` element (text, no external references)."""
    scale = _Scale(duration_of(manifest))
    rows = _rows(manifest)
    axis_y = TOP + len(rows) * ROW_H
    legend = _legend(manifest, axis_y + AXIS_H)
    height = axis_y + AXIS_H + LEGEND_H * (1 + max(_line_of(legend)))
    by_id = {row.participant_id: row for row in rows}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} '
        f'{height}" width="{WIDTH}" height="{height}" role="img" aria-label="Timeline: '
        f'{len(rows)} rows, {len(manifest.gaps)} gaps">',
        f'<text x="{LABEL_W}" y="14" class="lane-title">video lane above, audio lane below; '
        "coloured where nothing was recorded</text>",
    ]
    for row in rows:
        parts.extend(_row(row, scale))
    parts.extend(_gap(gap, by_id[gap.participant_id], scale) for gap in manifest.gaps)
    for change in manifest.consent:
        parts.append(_consent(change.participant_id, change.consent, change.at, by_id, scale))
    parts.extend(_e2ee(manifest, scale, axis_y))
    parts.extend(_axis(manifest, scale, axis_y))
    parts.extend(text for _, text in legend)
    parts.append("</svg>")
    return "\n".join(parts)


def _row(row: _Row, scale: _Scale) -> list[str]:
    label = escape(row.label)
    full = scale.x(scale.duration) - LABEL_W
    return [
        f'<text x="8" y="{row.y + LANE_H + 4:.1f}" class="row-label">{label}</text>',
        f'<rect class="media" x="{LABEL_W}" y="{row.y:.1f}" width="{full:.1f}" '
        f'height="{LANE_H}" fill="{MEDIA_COLOR}"><title>{label}: video</title></rect>',
        f'<rect class="media" x="{LABEL_W}" y="{row.y + LANE_H + 2:.1f}" width="{full:.1f}" '
        f'height="{LANE_H}" fill="{MEDIA_COLOR}"><title>{label}: audio</title></rect>',
    ]


def _gap(gap: Gap, row: _Row, scale: _Scale) -> str:
    x0, x1 = scale.x(gap.start), scale.x(gap.end)
    width = max(x1 - x0, MIN_GAP_PX)
    top = row.y if gap.kind != "audio" else row.y + LANE_H + 2
    height = 2 * LANE_H + 2 if gap.kind == "both" else LANE_H
    who = "everyone" if gap.participant_id is None else gap.participant_id
    reason = escape(gap.reason)
    tip = f"{escape(who)}: {gap.kind} {reason}, {gap.start:.2f}-{gap.end:.2f} s"
    return (
        f'<rect class="gap" data-reason="{reason}" data-kind="{gap.kind}" '
        f'data-participant="{escape(who)}" data-start="{gap.start:.3f}" '
        f'data-end="{gap.end:.3f}" x="{x0:.1f}" y="{top:.1f}" width="{width:.1f}" '
        f'height="{height}" fill="{reason_color(gap.reason)}"><title>{tip}</title></rect>'
    )


def _consent(
    participant_id: str, consent: str, at: float, rows: dict[str | None, _Row], scale: _Scale
) -> str:
    row, x = rows[participant_id], scale.x(at)
    color = MEDIA_COLOR if consent == "given" else reason_color("consent_withdrawn")
    y0, y1 = row.y - 3, row.y + 2 * LANE_H + 5
    return (
        f'<g class="consent" data-consent="{consent}" data-participant="{escape(participant_id)}" '
        f'data-at="{at:.3f}"><line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" '
        f'stroke="#202020" stroke-width="2"/><path d="M{x - 5:.1f},{y0 - 6:.1f} '
        f'h10 l-5,6 z" fill="{color}"/><title>consent {consent} by '
        f"{escape(participant_id)} at {at:.2f} s</title></g>"
    )


def _e2ee(manifest: Manifest, scale: _Scale, axis_y: float) -> list[str]:
    if manifest.e2ee is None:
        return []
    marks = []
    for change in manifest.e2ee.changes:
        at = (change.at - manifest.started_at).total_seconds()
        x = scale.x(at)
        marks.append(
            f'<g class="e2ee" data-kind="{change.kind}" data-epoch="{change.epoch}">'
            f'<circle cx="{x:.1f}" cy="{axis_y - 4}" r="4" fill="#7d3c98"/>'
            f"<title>end-to-end encryption: {change.kind}, epoch {change.epoch}, "
            f"{change.members} members, at {at:.2f} s</title></g>"
        )
    return marks


def _axis(manifest: Manifest, scale: _Scale, axis_y: float) -> list[str]:
    step = next((s for s in TICK_STEPS if scale.duration / s <= 10), TICK_STEPS[-1])
    parts = [
        f'<line x1="{LABEL_W}" y1="{axis_y}" x2="{scale.x(scale.duration):.1f}" '
        f'y2="{axis_y}" stroke="#202020"/>',
        f'<text x="8" y="{axis_y + 14}" class="axis">from start</text>',
        f'<text x="8" y="{axis_y + 28}" class="axis">UTC</text>',
    ]
    t = 0
    while t <= scale.duration + 1e-9:
        x = scale.x(t)
        clock = (manifest.started_at + timedelta(seconds=t)).strftime("%H:%M:%S")
        parts.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#202020"/>'
            f'<text x="{x:.1f}" y="{axis_y + 14}" class="axis" text-anchor="middle">'
            f"{t // 60}:{t % 60:02d}</text>"
            f'<text x="{x:.1f}" y="{axis_y + 28}" class="axis" text-anchor="middle">'
            f"{clock}</text>"
        )
        t += step
    return parts


def _legend(manifest: Manifest, y: float) -> list[tuple[int, str]]:
    """Media, then each reason colour the gaps use (reasons as the manifest writes them),
    wrapped onto as many lines as they need; each item with its line number."""
    items = [("recorded", MEDIA_COLOR)]
    for reason in dict.fromkeys(g.reason for g in manifest.gaps):
        items.append((reason, reason_color(reason)))
    if manifest.consent:
        items.append(("consent change (marker)", "#202020"))
    parts: list[tuple[int, str]] = []
    x, line = float(LABEL_W), 0
    for label, color in items:
        text = escape(label if len(label) <= 40 else label[:39] + "…")
        width = 24 + 6.5 * len(text)
        if x + width > WIDTH and x > LABEL_W:
            x, line = float(LABEL_W), line + 1
        top = y + line * LEGEND_H
        parts.append(
            (
                line,
                f'<g class="legend"><rect x="{x:.0f}" y="{top + 6}" width="12" height="12" '
                f'fill="{color}"/><text x="{x + 16:.0f}" y="{top + 16}" class="axis">{text}'
                "</text></g>",
            )
        )
        x += width
    return parts


def _line_of(legend: list[tuple[int, str]]) -> list[int]:
    return [line for line, _ in legend] or [0]
