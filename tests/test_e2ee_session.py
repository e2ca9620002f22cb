"""The recorder in an Orange Meets room: messages relayed as Orange's app relays them.

Orange's members run Orange's own worker (Node); the recorder gets the room's messages in
their wire shape through ``bot.e2ee.orange.relay``, and what it answers is broadcast back
unchanged. The room follows ``reference/e2ee.ts``: a ``shareKeyPackage`` reaches everyone
as ``userJoined``, a Welcome as ``recvMlsWelcome``, a Commit as ``recvMlsMessage``, and a
departure as ``userLeft``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from testbed.orange import OrangeWorkers, Output, interop_dir

from bot.e2ee.frames import FrameDecryptor
from bot.e2ee.orange import RoomMessageError, decode_payload, encode_payload, outgoing, relay
from bot.e2ee.session import E2eeSession, safety_number_text

FOLDER = interop_dir()
pytestmark = pytest.mark.skipif(
    FOLDER is None, reason="Orange's MLS worker (../shared/interop/orange-e2ee) or node is absent"
)
RECORDER = "recorder"


class Room:
    """Orange members plus the recorder, every message delivered to everyone else."""

    def __init__(self, orange: OrangeWorkers, session: E2eeSession) -> None:
        self.orange = orange
        self.session = session
        self.members: list[str] = []
        self.safety: dict[str, bytes] = {}

    def join(self, name: str, *, create: bool = False) -> None:
        self.orange.new(name)
        self.members.append(name)
        kind = "initializeAndCreateGroup" if create else "initialize"
        self._outputs(name, self.orange.event(name, kind, id=name))

    def leave(self, name: str) -> None:
        self.members.remove(name)
        for member in self.members:
            self._outputs(member, self.orange.event(member, "userLeft", id=name))
        self._from_recorder(relay(self.session, {"type": "userLeftNotification", "id": name}))

    def recorder_joins(self) -> None:
        self.session.key_package(RECORDER.encode())
        self._from_recorder(outgoing(self.session))

    def _outputs(self, sender: str, outputs: list[Output]) -> None:
        for output in outputs:
            if output.type == "newSafetyNumber":
                self.safety[sender] = output["hash"]
                continue
            message = {"type": output.type, "senderId": sender, **output.fields}
            self._deliver(sender, message)

    def _deliver(self, sender: str, message: dict[str, Any]) -> None:
        for member in [m for m in self.members if m != sender]:
            kind, fields = _as_event(message)
            self._outputs(member, self.orange.event(member, kind, **fields))
        if sender != RECORDER:
            room = {"type": "e2eeMlsMessage", "payload": encode_payload(message)}
            self._from_recorder(relay(self.session, room))

    def _from_recorder(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            assert message["type"] == "e2eeMlsMessage"
            self._deliver(RECORDER, decode_payload(message["payload"]))


def _as_event(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = message["type"]
    if kind == "shareKeyPackage":
        return "userJoined", {"keyPkg": message["keyPkg"]}
    if kind == "sendMlsWelcome":
        fields = {"welcome": message["welcome"], "rtree": message["rtree"]}
        return "recvMlsWelcome", {**fields, "senderId": message["senderId"]}
    return "recvMlsMessage", {"msg": message["msg"], "senderId": message["senderId"]}


@pytest.fixture
def room() -> Iterator[Room]:
    assert FOLDER is not None
    with OrangeWorkers(FOLDER) as orange:
        yield Room(orange, E2eeSession(FrameDecryptor()))


def test_the_recorder_in_an_orange_room_through_its_whole_life(room: Room) -> None:
    session = room.session
    room.join("alice", create=True)
    room.recorder_joins()  # its KeyPackage reaches alice, who commits the Add
    assert session.status().joined and not session.is_committer
    assert room.safety["alice"] == session.group.safety_number  # type: ignore[union-attr]

    room.join("bob")  # alice admits bob; the recorder follows, and does not commit
    status = session.status()
    assert status.members == 3 and not status.committer
    assert {room.safety["alice"], room.safety["bob"]} == {session.group.safety_number}  # type: ignore[union-attr]

    room.leave("alice")  # nobody from before the recorder is left: it commits the Remove
    assert session.is_committer and session.status().members == 2
    assert room.safety["bob"] == session.group.safety_number  # type: ignore[union-attr]

    room.join("carol")  # the recorder admits her with its Welcome
    assert session.status().members == 3
    number = session.group.safety_number  # type: ignore[union-attr]
    assert room.safety["bob"] == room.safety["carol"] == number
    assert session.status().safety_number == safety_number_text(number)
    kinds = [event.kind for event in session.events]
    assert kinds == ["joined", "epoch", "committed", "committed"]
    frames = session.frames
    for member in ("bob", "carol"):
        keyframe = bytes([0x10]) + bytes(99)
        assert frames.open(room.orange.encrypt(member, keyframe, "video")) == keyframe


def test_room_messages_that_are_not_orange_shapes_are_named(room: Room) -> None:
    session = room.session
    with pytest.raises(RoomMessageError, match="neither"):
        relay(session, {"type": "chat"})
    with pytest.raises(RoomMessageError, match="not JSON"):
        relay(session, {"type": "e2eeMlsMessage", "payload": "{"})
    bad = json.dumps(
        {"type": "shareKeyPackage", "keyPkg": {"FLAG_ARRAY_BUFFER": True, "data": [999]}}
    )
    with pytest.raises(RoomMessageError, match="not a list of bytes"):
        relay(session, {"type": "e2eeMlsMessage", "payload": bad})
    with pytest.raises(RoomMessageError, match="byte field 'keyPkg'"):
        relay(
            session, {"type": "e2eeMlsMessage", "payload": json.dumps({"type": "shareKeyPackage"})}
        )


def test_no_key_material_leaves_the_session(room: Room) -> None:
    """What the session shows the outside (status, events, reprs, room messages) never
    holds a private key or an epoch secret, in any common encoding."""
    room.join("alice", create=True)
    room.recorder_joins()
    session = room.session
    group, member = session.group, session.member
    assert group is not None and member is not None
    secrets = [member.init_private, member.encryption_private, member.signature_private]
    secrets += [
        getattr(group.current.secrets, f.name) for f in dataclasses.fields(group.current.secrets)
    ]
    secrets = [s for s in secrets if s != group.current.secrets.epoch_authenticator]
    shown = " ".join(
        [repr(session), repr(group), repr(member), repr(session.status()), repr(session.events)]
        + [json.dumps(m) for m in outgoing(session)]
    )
    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in shown
