"""Orange Meets' room messages, as they are, for an app that relays them to the recorder.

Orange's app sends its worker's outputs to every peer as ``{"type": "e2eeMlsMessage",
"payload": "<JSON>"}``, where the JSON is the worker message with each byte field
written as ``{"FLAG_ARRAY_BUFFER": true, "data": [0-255, ...]}`` (or
``FLAG_TYPED_ARRAY``), and tells everyone of a departure with ``{"type":
"userLeftNotification", "id": "<uid>"}`` (``reference/e2ee.ts``). ``relay`` takes one such
message, gives it to the recorder's session, and returns the messages the recorder sends
back in the same shape, so an Orange-style app forwards them unchanged.

Like Orange's worker, a handshake message for an epoch the group has already left is
ignored (``mls_ops.rs`` ignores only ``WrongEpoch``): every member sees the Commit that
admitted it, after its Welcome.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final

from bot.e2ee.group import WrongEpoch
from bot.e2ee.session import E2eeSession

FLAG_ARRAY_BUFFER: Final = "FLAG_ARRAY_BUFFER"
FLAG_TYPED_ARRAY: Final = "FLAG_TYPED_ARRAY"
MLS_MESSAGE: Final = "e2eeMlsMessage"
USER_LEFT: Final = "userLeftNotification"


class RoomMessageError(ValueError):
    """A room message that is not one of Orange's shapes; the message says which part."""


def decode_payload(payload: str) -> dict[str, Any]:
    """A worker message from its JSON, byte fields as ``bytes``."""

    def revive(value: dict[str, Any]) -> Any:
        if value.get(FLAG_ARRAY_BUFFER) or value.get(FLAG_TYPED_ARRAY):
            data = value.get("data")
            if not isinstance(data, list) or not all(
                isinstance(b, int) and 0 <= b < 256 for b in data
            ):
                raise RoomMessageError("a byte field's data is not a list of bytes")
            return bytes(data)
        return value

    try:
        message = json.loads(payload, object_hook=revive)
    except (json.JSONDecodeError, RecursionError):
        raise RoomMessageError("the payload is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise RoomMessageError("the payload has no message type")
    return message


def encode_payload(message: dict[str, Any]) -> str:
    def flag(value: Any) -> Any:
        if isinstance(value, bytes):
            return {FLAG_ARRAY_BUFFER: True, "data": list(value)}
        raise TypeError(f"cannot encode {type(value).__name__}")

    return json.dumps(message, default=flag)


def relay(session: E2eeSession, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Hand one room message to the session; the room messages it answers with."""
    kind = message.get("type")
    if kind == USER_LEFT:
        uid = message.get("id")
        if not isinstance(uid, str):
            raise RoomMessageError("userLeftNotification without a string id")
        session.member_left(uid.encode())
    elif kind == MLS_MESSAGE:
        payload = message.get("payload")
        if not isinstance(payload, str):
            raise RoomMessageError("e2eeMlsMessage without a string payload")
        _worker_message(session, decode_payload(payload))
    else:
        raise RoomMessageError("neither e2eeMlsMessage nor userLeftNotification")
    return outgoing(session)


def outgoing(session: E2eeSession) -> list[dict[str, Any]]:
    """What the recorder has to send (its KeyPackage, Commits, Welcomes), as room messages."""
    sender = (session.identity or b"").decode()
    return [
        {
            "type": MLS_MESSAGE,
            "payload": encode_payload({"type": out.type, "senderId": sender, **out.fields}),
        }
        for out in session.drain()
    ]


def _worker_message(session: E2eeSession, message: dict[str, Any]) -> None:
    kind = message["type"]
    if kind == "shareKeyPackage":
        session.member_joined(_bytes(message, "keyPkg"))
    elif kind == "sendMlsWelcome":
        rtree = message.get("rtree")
        session.welcome(_bytes(message, "welcome"), rtree if isinstance(rtree, bytes) else None)
    elif kind == "sendMlsMessage":
        if session.group is None:
            return  # not a member yet: nothing to follow
        with contextlib.suppress(WrongEpoch):
            session.message(_bytes(message, "msg"))
    else:
        raise RoomMessageError(f"unknown worker message type {kind!r}")


def _bytes(message: dict[str, Any], name: str) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes):
        raise RoomMessageError(f"{message['type']} without the byte field {name!r}")
    return value
