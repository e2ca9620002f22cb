"""The bodies control calls take, parsed without trusting them.

Reasons never quote a body: a value that is not what it should be may be a name, and
the reason goes to the audit trail; a bad value is named by position and fingerprint.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Final

import pydantic
from aiohttp import web

from bot.config import Participant, TrackRef
from bot.control.answers import ControlError
from bot.control.bounds import fingerprint

MAX_BODY: Final = 64 * 1024
MAX_JSON_DEPTH: Final = 8
"""An add body nests two deep; the JSON parser recurses once per level."""
_ADD_FIELDS: Final = frozenset({"participant_id", "role", "tracks"})
_CONSENT: Final = {"given": True, "withdrawn": False}
_JSON_STRUCTURE = re.compile(r'[][{}"\\]')


def nesting(text: str) -> int:
    """How deep arrays and objects nest in ``text``, strings skipped: measured before
    parsing, because the parser recurses once per level and fails past Python's recursion
    limit. One pass over the structural characters: no input makes it slower."""
    depth = deepest = 0
    in_string = False
    escaped = -1
    for match in _JSON_STRUCTURE.finditer(text):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped:
                continue
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


async def read_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body, size and depth bounded (reasons never quote it)."""
    try:
        text = (await request.read()).decode("utf-8")
    except web.HTTPRequestEntityTooLarge:
        raise ControlError(413, "too_large", f"body must be under {MAX_BODY} bytes") from None
    except UnicodeDecodeError:
        raise ControlError(400, "bad_request", "body must be JSON (UTF-8)") from None
    if nesting(text) > MAX_JSON_DEPTH:
        raise ControlError(
            400, "bad_request", f"body must be JSON nested at most {MAX_JSON_DEPTH} deep"
        )
    try:
        body: Any = json.loads(text)
    except json.JSONDecodeError:
        raise ControlError(400, "bad_request", "body must be JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "bad_request", "body must be a JSON object")
    return body


async def read_consent(request: web.Request) -> bool:
    """The consent body: ``{"consent": "given" | "withdrawn"}``; True when given."""
    body = await read_object(request)
    value = body.get("consent")
    if set(body) != {"consent"} or not isinstance(value, str) or value not in _CONSENT:
        raise ControlError(400, "bad_request", 'body must be {"consent": "given" | "withdrawn"}')
    return _CONSENT[value]


async def read_participant(request: web.Request) -> Participant:
    """The add body: ``{"participant_id", "role", "tracks": ["SESSION/TRACK", ...]}``.

    Reasons never quote the body: a value that is not what it should be may be a name,
    and the reason goes to the audit trail. A bad track is named by position and
    fingerprint.
    """
    body = await read_object(request)
    unknown = set(body) - _ADD_FIELDS
    if unknown:
        raise ControlError(
            400,
            "bad_request",
            f"{len(unknown)} unknown field(s); allowed: {', '.join(sorted(_ADD_FIELDS))}",
        )
    tracks = body.get("tracks")
    if not isinstance(tracks, list) or not tracks or not all(isinstance(t, str) for t in tracks):
        raise ControlError(
            400, "bad_request", "tracks must be a non-empty list of SESSION_ID/TRACK_NAME"
        )
    refs = []
    for index, track in enumerate(tracks):
        try:
            refs.append(TrackRef.parse(track))
        except ValueError:
            raise ControlError(
                400,
                "bad_request",
                f"tracks[{index}] ({fingerprint(track)}) is not SESSION_ID/TRACK_NAME "
                "(1-128 of [A-Za-z0-9_-], '/', 1-128 of [A-Za-z0-9_.:-])",
            ) from None
    try:
        return Participant(id=body.get("participant_id"), role=body.get("role"), tracks=refs)
    except pydantic.ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ControlError(400, "bad_request", reasons) from None


def base64_field(body: dict[str, Any], name: str, *, required: bool = True) -> bytes | None:
    """A field holding bytes as standard base64 (the E2EE routes' MLS messages)."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ControlError(400, "bad_request", f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ControlError(400, "bad_request", f"{name} is not valid base64") from None
