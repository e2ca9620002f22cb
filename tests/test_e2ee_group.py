"""The recorder as a passive MLS member, against the working group's passive-client vectors.

Each vector gives a KeyPackage with its private keys, a Welcome (and maybe the ratchet
tree beside it), then epochs of proposals and a Commit each, with the epoch
authenticator every member must reach. Joining and following every epoch to the same
authenticator is what the recorder does in a call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.e2ee.group import Group, GroupError, Member, NotForUs
from bot.e2ee.messages import KeyPackage, MLSMessage

VECTORS = Path(__file__).parent / "vectors" / "mls"


def _cases(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return cases


def _member(case: dict[str, Any]) -> Member:
    body = MLSMessage.from_bytes(bytes.fromhex(case["key_package"])).body
    assert isinstance(body, KeyPackage)
    return Member(
        key_package=body,
        init_private=bytes.fromhex(case["init_priv"]),
        encryption_private=bytes.fromhex(case["encryption_priv"]),
        signature_private=bytes.fromhex(case["signature_priv"]),
    )


def _join(case: dict[str, Any]) -> Group:
    tree = bytes.fromhex(case["ratchet_tree"]) if case["ratchet_tree"] else None
    psks = {bytes.fromhex(p["psk_id"]): bytes.fromhex(p["psk"]) for p in case["external_psks"]}
    return Group.join(_member(case), bytes.fromhex(case["welcome"]), tree, psks)


def _follow(case: dict[str, Any]) -> None:
    group = _join(case)
    assert group.current.secrets.epoch_authenticator.hex() == case["initial_epoch_authenticator"]
    for number, epoch in enumerate(case["epochs"]):
        for proposal in epoch["proposals"]:
            assert group.handle(bytes.fromhex(proposal)) is False
        assert group.handle(bytes.fromhex(epoch["commit"])) is True
        assert group.current.secrets.epoch_authenticator.hex() == epoch["epoch_authenticator"], (
            f"epoch {number}"
        )


@pytest.mark.parametrize("index", range(len(_cases("passive-client-welcome.json"))))
def test_join_from_welcome(index: int) -> None:
    _follow(_cases("passive-client-welcome.json")[index])


@pytest.mark.parametrize("index", range(len(_cases("passive-client-handling-commit.json"))))
def test_follow_commits(index: int) -> None:
    _follow(_cases("passive-client-handling-commit.json")[index])


def test_a_welcome_for_someone_else_is_named_as_such() -> None:
    case = _cases("passive-client-welcome.json")[0]
    stranger = Member.create(b"stranger")
    with pytest.raises(NotForUs):
        Group.join(stranger, bytes.fromhex(case["welcome"]), None)


def test_a_tampered_welcome_is_refused() -> None:
    case = _cases("passive-client-welcome.json")[0]
    welcome = bytearray(bytes.fromhex(case["welcome"]))
    welcome[-5] ^= 0x01  # inside the encrypted GroupInfo
    tree = bytes.fromhex(case["ratchet_tree"]) if case["ratchet_tree"] else None
    # The encrypted GroupInfo is also the HPKE context of the group secrets: those fail first.
    with pytest.raises(GroupError, match="cannot be opened"):
        Group.join(_member(case), bytes(welcome), tree)
