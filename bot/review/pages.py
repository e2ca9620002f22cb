"""The review pages as HTML text: the list, one recording, a ``bot verify`` verdict.

Plain server-rendered HTML with one stylesheet and no script: the page only shows, so it
needs none, and the server's Content-Security-Policy forbids scripts outright. Links
carry the object key in the query (keys are built from opaque ids and dates only); the
access token never appears in a page (it lives in an HttpOnly cookie).
"""

from __future__ import annotations

from html import escape
from typing import Final
from urllib.parse import urlencode

from bot import __version__
from bot.review import facts
from bot.review.catalog import Listing, Record
from bot.review.timeline import timeline_svg

CSS: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 24px 40px; color: #202020; }
header { display: flex; gap: 16px; align-items: baseline; border-bottom: 1px solid #ccc; }
header a { color: inherit; text-decoration: none; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 10px 3px 0; text-align: left;
  vertical-align: top; }
table.facts th { font-weight: normal; color: #555; width: 220px; }
td { font-variant-numeric: tabular-nums; }
table.audit td:last-child { font-family: monospace; font-size: 12px; word-break: break-all; }
.top { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
video { width: 560px; max-width: 100%; background: #000; display: block; }
svg.timeline { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
svg .row-label, svg .axis, svg .lane-title { font: 12px system-ui, sans-serif; fill: #202020; }
svg .lane-title { fill: #777; }
.warn { color: #b03a2e; font-weight: bold; } .none, .muted { color: #777; }
.ok { color: #3a9d5d; font-weight: bold; } .fail { color: #b03a2e; font-weight: bold; }
pre { background: #f6f6f6; padding: 8px; }
"""


def link(path: str, key: str) -> str:
    return f"{path}?{urlencode({'key': key})}"


def page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f'<title>{escape(title)}</title><link rel="stylesheet" href="/review.css"></head>'
        f'<body><header><h1><a href="/">Consultation recordings</a></h1>'
        f'<span class="muted">bot review {escape(__version__)} · read-only</span></header>'
        f"{body}</body></html>"
    )


def listing_page(listing: Listing, where: str) -> str:
    """Newest first: start date and time, consultation id, recording id, length, gaps."""
    rows = []
    for entry in listing.entries:
        m = entry.manifest
        rows.append(
            "<tr>"
            f"<td>{escape(facts.when(m.started_at))}</td>"
            f"<td>{escape(m.consultation_id)}</td>"
            f'<td><a class="recording" href="{escape(link("/recording", entry.key))}">'
            f"{escape(m.recording_id)}</a></td>"
            f"<td>{escape(facts.seconds(m.duration_seconds))}</td>"
            f"<td>{len(m.participants)}</td><td>{len(m.gaps)}</td>"
            f"<td>{'yes' if m.storage else 'no'}</td>"
            f"<td>{escape(m.custody.signature if m.custody else 'unsealed')}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "started (UTC)",
            "consultation",
            "recording",
            "length",
            "participants",
            "gaps",
            "verified",
            "signature",
        )
    )
    count = len(listing.entries)
    notes = [
        f'<p class="muted">{count} recording{"" if count == 1 else "s"} in {escape(where)}.</p>'
    ]
    if listing.truncated:
        notes.append('<p class="warn">Only the newest recordings are listed (--limit).</p>')
    if listing.unreadable:
        notes.append(
            f'<p class="warn">{len(listing.unreadable)} manifests could not be read: '
            + escape(", ".join(listing.unreadable[:20]))
            + "</p>"
        )
    body = (
        "".join(notes)
        + f'<table class="recordings"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )
    return page("Consultation recordings", body)


def record_page(record: Record) -> str:
    """One recording: the player, the timeline, the facts, the audit trail."""
    m = record.manifest
    media = escape(link("/media", record.key))
    summary = facts.pairs(
        [
            ("consultation id", m.consultation_id),
            ("recording id", m.recording_id),
            ("started", facts.when(m.started_at)),
            ("ended", facts.when(m.ended_at)),
            ("length", facts.seconds(m.duration_seconds)),
            (
                "video",
                f"{m.video.codec} {m.video.width}x{m.video.height} {m.video.fps:g} fps"
                if m.video
                else "-",
            ),
            ("audio", f"{m.audio.codec} {m.audio.sample_rate} Hz" if m.audio else "-"),
            ("recorder", m.recorder_version),
        ]
    )
    player = (
        f'<video id="player" controls preload="metadata" src="{media}"></video>'
        if record.object_size is not None
        else '<p class="warn">The object is missing from the store: nothing to play.</p>'
    )
    verify = escape(link("/verify", record.key))
    body = (
        f'<h2>Recording {escape(m.recording_id)}</h2><div class="top">{player}{summary}</div>'
        f'<h2>Timeline</h2><div id="timeline">{timeline_svg(m)}</div>'
        f"<h2>Participants</h2>{facts.participants(m)}"
        f'<h2>Gaps</h2><div id="gaps">{facts.gaps(m)}</div>'
        f"<h2>Consent</h2>{facts.consent(m)}"
        f'<h2>Storage and verification</h2><div id="storage">{facts.storage(record)}</div>'
        f'<h2>Custody</h2><div id="custody">{facts.custody(record)}</div>'
        f'<p><a id="verify" href="{verify}">Run bot verify on this record</a> '
        '<span class="muted">(reads the whole object; may take a while)</span></p>'
        f'<h2>Audit trail</h2><div id="audit">{facts.audit(record)}</div>'
    )
    return page(f"Recording {m.recording_id}", body)


def verdict_page(key: str, ok: bool, lines: list[str]) -> str:
    verdict = '<p class="ok">VERIFIED</p>' if ok else '<p class="fail">NOT VERIFIED</p>'
    body = (
        f'<h2>bot verify</h2><p><a href="{escape(link("/recording", key))}">'
        f"back to the recording</a></p>{verdict}"
        f'<pre id="verdict">{escape(chr(10).join(lines))}</pre>'
    )
    return page("bot verify", body)


def message_page(title: str, text: str) -> str:
    """An error or refusal, with what to do; never the request's own text."""
    return page(title, f"<h2>{escape(title)}</h2><p>{escape(text)}</p>")
