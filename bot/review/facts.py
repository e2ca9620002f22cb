"""The detail page's fact tables: participants, gaps, consent, storage, custody, audit trail.

Each table shows what the manifest and the audit trail say, as they say it, next to what
was checked just now (the object's presence and size, the trail's hash chain against the
head the manifest seals), so a reviewer sees a stale or tampered record at once without
running ``bot verify``. Only opaque ids, roles, times, sizes and hashes appear: that is
all the record holds. Every value is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any, Final

from bot.custody.chain import FRAGMENT_EVENT
from bot.manifest import Manifest
from bot.review.catalog import Record

MAX_AUDIT_ROWS: Final = 500
"""Audit events shown (fragment events are counted, not listed)."""
_HIDDEN_FIELDS: Final = frozenset(
    {"time", "seq", "consultation_id", "recording_id", "actor", "event", "prev"}
)
MAX_FIELD_TEXT: Final = 200


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, rest = divmod(value, 60)
    return f"{int(minutes)}:{rest:04.1f}" if minutes else f"{rest:.1f} s"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pairs(rows: Iterable[tuple[str, object]], cls: str = "facts") -> str:
    body = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>" for name, value in rows
    )
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def participants(manifest: Manifest) -> str:
    tracks: dict[str, list[str]] = {}
    for track in manifest.tracks:
        tracks.setdefault(track.participant_id, []).append(track.kind)
    rows = [(p.role, p.id, ", ".join(tracks.get(p.id, [])) or "-") for p in manifest.participants]
    return table(("role", "participant id", "tracks"), rows)


def gaps(manifest: Manifest) -> str:
    if not manifest.gaps:
        return '<p class="none">No gaps: every participant was recorded throughout.</p>'
    rows = [
        (
            g.participant_id or "everyone",
            g.kind,
            f"{g.start:.2f}",
            f"{g.end:.2f}",
            f"{g.end - g.start:.2f}",
            g.reason,
        )
        for g in manifest.gaps
    ]
    return table(("participant", "kind", "from s", "to s", "seconds", "reason"), rows, "gaps")


def consent(manifest: Manifest) -> str:
    parts = [f"<p>Consent required before recording: {_yes(manifest.require_consent)}.</p>"]
    if manifest.consent:
        rows = [(c.participant_id, c.consent, f"{c.at:.2f}") for c in manifest.consent]
        parts.append(table(("participant", "consent", "at s"), rows, "consent"))
    if manifest.e2ee is not None:
        changes = [
            (when(c.at), c.kind, c.epoch, c.members, c.safety_number[:24])
            for c in manifest.e2ee.changes
        ]
        parts.append("<p>End-to-end encrypted call; the recorder's membership:</p>")
        parts.append(table(("at", "change", "epoch", "members", "safety number"), changes))
    return "".join(parts)


def storage(record: Record) -> str:
    """Where the object is and how it was verified before the spool was deleted."""
    stored = record.manifest.storage
    if stored is None:
        return '<p class="warn">No storage record: this object was never verified.</p>'
    if record.object_size is None:
        now = "MISSING from the store"
    elif record.object_size == stored.size:
        now = f"present, {record.object_size} bytes as the manifest says"
    else:
        now = f"present but {record.object_size} bytes; the manifest says {stored.size}"
    check = stored.verification
    return pairs(
        [
            ("object now", now),
            ("backend", stored.backend + (f" (bucket {stored.bucket})" if stored.bucket else "")),
            ("object key", stored.object_key),
            ("size", f"{stored.size} bytes in {len(stored.parts)} part(s) of {stored.part_size}"),
            ("SHA-256", stored.sha256),
            ("ETag", stored.etag or "-"),
            ("encryption at rest", stored.encryption),
            ("verified at", when(check.verified_at)),
            ("size matched", _yes(check.size_ok)),
            ("ETag", check.etag),
            ("SHA-256 checked by", check.sha256_method),
            (
                "decodes at start / end",
                f"{_yes(check.decode_start_ok)} / {_yes(check.decode_end_ok)}",
            ),
        ]
    )


def custody(record: Record) -> str:
    """The chain heads and signature the manifest seals, against the trail read now."""
    sealed = record.manifest.custody
    if sealed is None:
        return '<p class="warn">No custody section: the record is not sealed.</p>'
    check = record.trail_check
    if record.trail is None or check is None:
        trail = "MISSING: no audit trail beside the object"
    elif check.problem is not None:
        trail = f"BROKEN: {check.problem}"
    elif (check.links, check.head) != (sealed.audit_lines, sealed.audit_head):
        trail = f"DOES NOT MATCH: {check.links} lines, the manifest seals {sealed.audit_lines}"
    else:
        trail = f"intact: {check.links} lines, each following the one before, as sealed"
    signature: str = sealed.signature
    if sealed.signature_alg:
        signature += f" ({sealed.signature_alg}, key {sealed.key_id})"
    return pairs(
        [
            ("audit trail now", trail),
            ("fragments sealed", f"{sealed.fragments}, chain {sealed.fragment_chain}"),
            ("audit head sealed", sealed.audit_head),
            ("signature", signature),
            ("signature file", "present" if record.signed_file else "absent"),
            ("FHIR DocumentReference", "present" if record.fhir_file else "absent"),
            ("recovered by bot recover", _yes(record.manifest.recovered)),
        ]
    )


def audit(record: Record) -> str:
    """Every event but the per-fragment ones, which are counted: they are the chain's
    links, one every keyframe interval, and would bury the events a person acts on."""
    if record.trail is None:
        return '<p class="warn">No audit trail beside the object.</p>'
    rows, fragments, shown = [], 0, 0
    for raw in record.trail:
        line = _line(raw)
        if line.get("event") == FRAGMENT_EVENT:
            fragments += 1
            continue
        shown += 1
        if shown <= MAX_AUDIT_ROWS:
            rows.append(_audit_row(line))
    note = f"<p>{len(record.trail)} lines; {fragments} fragment.written events not listed."
    if shown > MAX_AUDIT_ROWS:
        note += f" The first {MAX_AUDIT_ROWS} of {shown} other events are listed."
    return note + "</p>" + table(("seq", "time", "actor", "event", "details"), rows, "audit")


def _line(raw: bytes) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except ValueError:
        return {"event": "(unreadable line)"}
    return line if isinstance(line, dict) else {"event": "(unreadable line)"}


def _audit_row(line: dict[str, Any]) -> tuple[str, ...]:
    details = ", ".join(
        f"{name}={_short(value)}" for name, value in line.items() if name not in _HIDDEN_FIELDS
    )
    return (
        str(line.get("seq", "-")),
        str(line.get("time", "-")),
        str(line.get("actor", "-")),
        str(line.get("event", "-")),
        details,
    )


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_FIELD_TEXT else text[: MAX_FIELD_TEXT - 1] + "…"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
