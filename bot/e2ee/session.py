"""The recorder's part in one encrypted call: its KeyPackage, its membership, its duties.

``E2eeSession`` is what the control API drives: it makes the KeyPackage the call's
committer admits, joins from the Welcome, follows every Commit, and hands the group to
the frame decryptor so media opens from that moment. It also takes the committer's role
when it falls to the recorder, by Orange Meets' rule (``mls_ops.rs``): a member commits
once everyone who was in the group when it was welcomed has left; until then it leaves
Adds and Removes to them. What the recorder must send to the room (its Commits and
Welcomes) waits in ``outbox`` for the orchestrator to collect.

Changes are recorded as ``E2eeEvent`` values (joined, new epoch, committed) with the
safety number, never key material; the recorder turns them into audit lines and the
manifest.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from bot.e2ee.frames import FrameDecryptor
from bot.e2ee.group import Committed, Group, GroupError, Member, NotForUs

EventKind = Literal["joined", "epoch", "committed", "removed"]
MAX_OUTBOX: Final = 256


def safety_number_text(number: bytes) -> str:
    """How Orange's app shows it: each byte as two or three decimal digits, joined."""
    return "".join(f"{byte:02d}" for byte in number)


@dataclass(frozen=True)
class E2eeEvent:
    kind: EventKind
    epoch: int
    safety_number: str
    members: int
    at: float
    """Wall-clock time (Unix seconds)."""


@dataclass(frozen=True)
class Outgoing:
    """Something the recorder must send to the call's members (Orange's message types)."""

    type: Literal["shareKeyPackage", "sendMlsWelcome", "sendMlsMessage"]
    fields: dict[str, bytes]

    def as_dict(self) -> dict[str, str]:
        """For the control API: bytes as base64."""
        encoded = {name: base64.b64encode(value).decode() for name, value in self.fields.items()}
        return {"type": self.type, **encoded}


@dataclass
class E2eeStatus:
    joined: bool
    epoch: int | None
    safety_number: str | None
    members: int
    committer: bool


@dataclass
class E2eeSession:
    """The recorder's membership; every method is called from the event loop."""

    frames: FrameDecryptor
    clock: Callable[[], float] = time.time
    member: Member | None = None
    group: Group | None = None
    events: list[E2eeEvent] = field(default_factory=list)
    outbox: list[Outgoing] = field(default_factory=list)
    _before_us: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def identity(self) -> bytes | None:
        return self.member.identity if self.member else None

    def key_package(self, identity: bytes) -> bytes:
        """Our KeyPackage (bare, as Orange shares them); a new identity starts afresh."""
        if self.member is None or self.member.identity != identity:
            if self.group is not None:
                raise GroupError("already a member of this call's group under another identity")
            self.member = Member.create(identity)
        package = self.member.key_package.to_bytes()
        self._send(Outgoing("shareKeyPackage", {"keyPkg": package}))
        return package

    def welcome(self, welcome: bytes, ratchet_tree: bytes | None) -> bool:
        """Join from a Welcome; False (and nothing changes) if it is for someone else."""
        if self.member is None:
            raise GroupError("no KeyPackage was made yet: ask for one first")
        if self.group is not None:
            return False  # Orange broadcasts Welcomes: later ones are for newcomers
        try:
            group = Group.join(self.member, welcome, ratchet_tree)
        except NotForUs:
            return False
        self.group = group
        self._before_us = set(group.members) - {self.member.identity}
        self.frames.use(group)
        self._record("joined")
        return True

    def message(self, message: bytes) -> bool:
        """A handshake message from the room; True when it started a new epoch."""
        group = self._joined()
        changed = group.handle(message)
        if group.removed:
            self._record("removed")
        elif changed:
            self._record("epoch")
        return changed

    def member_joined(self, key_package: bytes) -> Committed | None:
        """A newcomer's KeyPackage: admitted here if the recorder is the committer."""
        if self.group is None or not self.is_committer:
            return None
        committed = self.group.commit(add=[key_package])
        assert committed.welcome is not None
        self._send(
            Outgoing(
                "sendMlsWelcome",
                {"welcome": committed.welcome, "rtree": committed.ratchet_tree},
            )
        )
        self._send(Outgoing("sendMlsMessage", {"msg": committed.commit}))
        self._record("committed")
        return committed

    def member_left(self, identity: bytes) -> Committed | None:
        """A member left the room: removed here if the recorder is (now) the committer."""
        self._before_us.discard(identity)
        group = self.group
        leaf = group.leaf_of(identity) if group is not None else None
        if group is None or leaf is None or not self.is_committer:
            return None
        committed = group.commit(remove=[leaf])
        self._send(Outgoing("sendMlsMessage", {"msg": committed.commit}))
        self._record("committed")
        return committed

    @property
    def is_committer(self) -> bool:
        """Orange's rule: nobody who was there when we were welcomed is still here."""
        return self.group is not None and not self.group.removed and not self._before_us

    def drain(self) -> list[Outgoing]:
        with self._lock:
            taken, self.outbox = self.outbox, []
        return taken

    def status(self) -> E2eeStatus:
        group = self.group
        return E2eeStatus(
            joined=group is not None and not group.removed,
            epoch=group.epoch if group else None,
            safety_number=safety_number_text(group.safety_number) if group else None,
            members=len(group.members) if group else 0,
            committer=self.is_committer,
        )

    def _joined(self) -> Group:
        if self.group is None:
            raise GroupError("not a member of the call's group yet: no Welcome was processed")
        return self.group

    def _send(self, outgoing: Outgoing) -> None:
        with self._lock:
            self.outbox.append(outgoing)
            del self.outbox[:-MAX_OUTBOX]

    def _record(self, kind: EventKind) -> None:
        group = self._joined()
        self.events.append(
            E2eeEvent(
                kind,
                group.epoch,
                safety_number_text(group.safety_number),
                len(group.members),
                self.clock(),
            )
        )
