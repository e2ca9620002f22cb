"""The recorder's MLS member against ts-mls (npm), a second RFC 9420 implementation.

ts-mls members in Node (``testbed.tsmls``) create the group, admit the recorder with a
Welcome carrying the ratchet tree in its GroupInfo (ts-mls's own way), seal application
messages, and admit a third member with a Commit the recorder follows; then the recorder
commits an Add (Welcome and ratchet tree beside it) and a Remove that the ts-mls members
process. Every member's epoch authenticator must be equal at every epoch. Skips, saying
why, where Node or the installed ts-mls (``npm ci --prefix testbed/src/testbed/tsmls``)
is absent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testbed.tsmls import TsMlsMembers, available

from bot.e2ee.group import Group, Member

MISSING = available()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"ts-mls interop needs Node and ts-mls: {MISSING}"
)

GROUP_ID = b"consultation-tsmls"


@pytest.fixture
def ts() -> Iterator[TsMlsMembers]:
    with TsMlsMembers() as members:
        yield members


def _all_equal(ts: TsMlsMembers, group: Group, *names: str) -> None:
    """Everyone at the same epoch with the same epoch authenticator and roster."""
    ours = group.current.secrets.epoch_authenticator
    for name in names:
        state = ts.state(name)
        assert (name, state.epoch) == (name, group.epoch)
        assert (name, state.epoch_authenticator) == (name, ours)
        assert [identity for identity in state.members if identity is not None] == group.members
    assert group.safety_number == ours[:32]


def _recorder_in_alices_group(ts: TsMlsMembers) -> tuple[Member, Group]:
    ts.new("alice")
    ts.create("alice", GROUP_ID)
    recorder = Member.create(b"recorder")
    added = ts.commit("alice", add=[recorder.key_package.to_bytes()], tree_in_welcome=True)
    assert added.welcome is not None
    return recorder, Group.join(recorder, added.welcome, None)


def test_welcomed_by_ts_mls_it_shares_the_epoch_and_opens_its_messages(ts: TsMlsMembers) -> None:
    _, group = _recorder_in_alices_group(ts)
    assert group.members == [b"alice", b"recorder"]
    assert group.epoch == 1
    _all_equal(ts, group, "alice")
    for data in (b"frame one", bytes(range(256)) * 4, b""):
        assert group.open_application(ts.send("alice", data)) == data


def test_welcome_with_the_tree_beside_it_as_orange_sends_it(ts: TsMlsMembers) -> None:
    ts.new("alice")
    ts.create("alice", GROUP_ID)
    recorder = Member.create(b"recorder")
    added = ts.commit("alice", add=[recorder.key_package.to_bytes()])
    assert added.welcome is not None
    group = Group.join(recorder, added.welcome, added.ratchet_tree)
    _all_equal(ts, group, "alice")


@pytest.mark.parametrize("public", [False, True], ids=["private-commit", "public-commit"])
def test_it_follows_a_ts_mls_commit_adding_a_third_member(ts: TsMlsMembers, public: bool) -> None:
    _, group = _recorder_in_alices_group(ts)
    bob = ts.new("bob")
    added = ts.commit("alice", add=[bob], public=public)
    assert added.welcome is not None
    assert group.handle(added.commit) is True
    ts.join("bob", added.welcome, added.ratchet_tree)
    assert group.members == [b"alice", b"recorder", b"bob"]
    _all_equal(ts, group, "alice", "bob")
    for name in ("alice", "bob"):
        assert group.open_application(ts.send(name, name.encode())) == name.encode()
    # ts-mls's own Remove of bob (a Commit with an UpdatePath): the recorder follows it.
    removed = ts.commit("alice", remove=[2], public=public)
    assert group.handle(removed.commit) is True
    assert group.members == [b"alice", b"recorder"]
    _all_equal(ts, group, "alice")


def test_ts_mls_members_follow_the_recorders_add_and_remove(ts: TsMlsMembers) -> None:
    _, group = _recorder_in_alices_group(ts)
    bob = ts.new("bob")
    added = ts.commit("alice", add=[bob])
    assert added.welcome is not None
    group.handle(added.commit)
    ts.join("bob", added.welcome, added.ratchet_tree)

    # The recorder admits carol: its Commit to alice and bob, its Welcome and tree to her.
    carol = ts.new("carol")
    own = group.commit(add=[carol])
    assert own.welcome is not None
    for name in ("alice", "bob"):
        assert ts.process(name, own.commit) is None
    ts.join("carol", own.welcome, own.ratchet_tree)
    assert group.members == [b"alice", b"recorder", b"bob", b"carol"]
    _all_equal(ts, group, "alice", "bob", "carol")
    assert group.open_application(ts.send("carol", b"from carol")) == b"from carol"

    # The recorder removes bob (leaf 2): alice and carol follow, bob's leaf goes blank.
    own = group.commit(remove=[2])
    assert own.welcome is None
    for name in ("alice", "carol"):
        ts.process(name, own.commit)
    assert group.members == [b"alice", b"recorder", b"carol"]
    assert ts.state("alice").members == [b"alice", b"recorder", None, b"carol"]
    _all_equal(ts, group, "alice", "carol")

    # Both at once, and a ts-mls Commit after the recorder's: still one epoch for all.
    dave = ts.new("dave")
    own = group.commit(add=[dave], remove=[3])
    assert own.welcome is not None
    ts.process("alice", own.commit)
    ts.join("dave", own.welcome, own.ratchet_tree)
    _all_equal(ts, group, "alice", "dave")
    emma = ts.new("emma")
    added = ts.commit("dave", add=[emma])
    assert added.welcome is not None
    ts.process("alice", added.commit)
    assert group.handle(added.commit) is True
    ts.join("emma", added.welcome, added.ratchet_tree)
    _all_equal(ts, group, "alice", "dave", "emma")
    for name in ("alice", "dave", "emma"):
        assert group.open_application(ts.send(name, name.encode())) == name.encode()
