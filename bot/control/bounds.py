"""Caller input on its way to the audit trail: bounded, and never quoted where it is free text.

The trail is evidence kept with the recording, so what a caller sends must neither grow
it at will nor carry what the caller typed (a name where an id belongs). Free text the
control layer refers to is named by ``fingerprint`` (a SHA-256 prefix and the length:
enough to match it with what the caller says they sent). ``bounded`` is the last guard on
every field of a control event: long strings are cut, long lists shortened, and anything
still too big is replaced by its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

MAX_TEXT: Final = 256
"""Characters of a string field kept in an audit line."""
MAX_ITEMS: Final = 16
"""Items of a list field kept in an audit line."""
MAX_FIELD: Final = 1024
"""JSON characters of one field, after the cuts above."""


def fingerprint(text: str) -> str:
    """Names ``text`` without quoting it."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest[:16]}, {len(text)} chars"


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"{value[:MAX_TEXT]}... ({fingerprint(value)})"
    if isinstance(value, list | tuple):
        kept = [_cut(item) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            kept.append(f"... {len(value) - MAX_ITEMS} more")
        return kept
    return value


def bounded(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` fit for an audit line: each at most about ``MAX_FIELD`` characters."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        cut = _cut(value)
        text = json.dumps(cut, default=str)
        out[name] = cut if len(text) <= MAX_FIELD else fingerprint(text)
    return out
