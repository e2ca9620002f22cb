"""ts-mls (npm) as a second MLS implementation nobody here wrote: members in Node.

``member.mjs`` hosts any number of ts-mls members in one Node process, driven over JSON
lines (bytes as base64): each makes a KeyPackage, creates or joins a group, commits Adds
and Removes (with the Welcome and the ratchet tree), processes Commits and application
messages, seals application messages and reports its epoch authenticator. Ciphersuite 1
only, as the recorder. ts-mls and its one undeclared import (``@noble/hashes``) are pinned
in ``package.json`` and installed beside it by ``npm ci --prefix`` this folder.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from testbed.nodejs import NodeScript

FOLDER: Final = Path(__file__).resolve().parent
MEMBER_JS: Final = FOLDER / "member.mjs"
MIN_NODE: Final = 20


def available() -> str | None:
    """None when Node (20 or later, as ts-mls asks) and the installed ts-mls are here,
    else why not."""
    node = shutil.which("node")
    if node is None:
        return "node is not on this machine"
    version = subprocess.run(
        [node, "--version"], check=False, capture_output=True, text=True
    ).stdout
    major = version.strip().removeprefix("v").split(".")[0]
    if not major.isdigit() or int(major) < MIN_NODE:
        return f"ts-mls needs Node {MIN_NODE} or later; this node is {version.strip() or '?'}"
    if not (FOLDER / "node_modules/ts-mls/package.json").is_file():
        return f"ts-mls is not installed (npm ci --prefix {FOLDER})"
    return None


@dataclass(frozen=True)
class Committed:
    commit: bytes
    welcome: bytes | None
    ratchet_tree: bytes


@dataclass(frozen=True)
class State:
    epoch: int
    leaf: int
    epoch_authenticator: bytes
    members: list[bytes | None]
    """Each leaf's identity, None for a blank leaf."""


class TsMlsMembers:
    """A Node process hosting ts-mls members; close it when done. One call at a time."""

    def __init__(self) -> None:
        self._node = NodeScript(MEMBER_JS, cwd=FOLDER)

    def __enter__(self) -> TsMlsMembers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._node.close()

    def new(self, member: str) -> bytes:
        """A member named ``member`` (its basic credential's identity); its bare KeyPackage."""
        return _bytes(self._call(op="new", m=member)["keyPackage_b64"])

    def create(self, member: str, group_id: bytes) -> None:
        self._call(op="create", m=member, groupId_b64=_text(group_id))

    def commit(
        self,
        member: str,
        add: Sequence[bytes] = (),
        remove: Sequence[int] = (),
        *,
        public: bool = False,
        tree_in_welcome: bool = False,
    ) -> Committed:
        """A Commit of Removes (leaf indices) and Adds (bare KeyPackages); the member moves
        to the new epoch. ``public``: a PublicMessage, else a PrivateMessage (ts-mls's
        default); ``tree_in_welcome``: the ratchet_tree extension in the GroupInfo."""
        answer = self._call(
            op="commit",
            m=member,
            add_b64=[_text(package) for package in add],
            remove=list(remove),
            public=public,
            treeInWelcome=tree_in_welcome,
        )
        welcome = answer.get("welcome_b64")
        return Committed(
            _bytes(answer["commit_b64"]),
            _bytes(welcome) if welcome else None,
            _bytes(answer["ratchetTree_b64"]),
        )

    def join(self, member: str, welcome: bytes, ratchet_tree: bytes | None = None) -> None:
        fields: dict[str, Any] = {"welcome_b64": _text(welcome)}
        if ratchet_tree is not None:
            fields["ratchetTree_b64"] = _text(ratchet_tree)
        self._call(op="join", m=member, **fields)

    def process(self, member: str, message: bytes) -> bytes | None:
        """Process an MLSMessage; the application data if it was an application message."""
        answer = self._call(op="process", m=member, message_b64=_text(message))
        data = answer.get("message_b64")
        return None if data is None else _bytes(data)

    def send(self, member: str, data: bytes) -> bytes:
        """``data`` sealed as an MLSMessage(PrivateMessage) of the member's epoch."""
        return _bytes(self._call(op="send", m=member, data_b64=_text(data))["message_b64"])

    def state(self, member: str) -> State:
        answer = self._call(op="state", m=member)
        return State(
            answer["epoch"],
            answer["leaf"],
            _bytes(answer["epochAuthenticator_b64"]),
            [None if identity is None else _bytes(identity) for identity in answer["members_b64"]],
        )

    def _call(self, **command: Any) -> dict[str, Any]:
        return self._node.call(**command)


def _text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes(text: str) -> bytes:
    return base64.b64decode(text)
