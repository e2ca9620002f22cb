"""The recorder's MLS member against Orange Meets' own worker (openmls 0.7.1, WASM in Node).

Orange's members create the group, admit the recorder with a Welcome and the ratchet
tree beside it, encrypt frames through the worker's own stream path, and admit a third
member with a Commit the recorder must follow. The recorder's safety number must equal
theirs at every epoch, and it must open every frame to the bytes that were encrypted.
Skips, saying why, where Orange's worker (../shared/interop/orange-e2ee) or Node is absent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testbed.orange import OrangeWorkers, interop_dir, of_type

from bot.e2ee.frames import FrameDecryptor, Outcome, looks_encrypted
from bot.e2ee.group import Group, GroupError, Member

FOLDER = interop_dir()
pytestmark = pytest.mark.skipif(
    FOLDER is None,
    reason="Orange's MLS worker (../shared/interop/orange-e2ee, or $ORANGE_E2EE) or node is "
    "not on this machine",
)

KEYFRAME = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + bytes(range(200))
"""First bit 0: a VP8 keyframe's header, 10 bytes of it stay in the clear."""
DELTA = bytes([0x31]) + bytes(range(120))
OPUS = bytes([0xFC]) + bytes(range(60))


@pytest.fixture
def orange() -> Iterator[OrangeWorkers]:
    assert FOLDER is not None
    with OrangeWorkers(FOLDER) as workers:
        yield workers


def _admit(
    orange: OrangeWorkers, committer: str, key_package: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """The committer adds a KeyPackage: (welcome, ratchet tree, commit, safety number)."""
    outputs = orange.event(committer, "userJoined", keyPkg=key_package)
    welcome = of_type(outputs, "sendMlsWelcome")[0]
    commit = of_type(outputs, "sendMlsMessage")[0]
    safety = of_type(outputs, "newSafetyNumber")[0]
    return welcome["welcome"], welcome["rtree"], commit["msg"], safety["hash"]


def test_joined_by_orange_it_reads_every_frame_and_follows_the_next_epoch(
    orange: OrangeWorkers,
) -> None:
    orange.new("alice")
    orange.event("alice", "initializeAndCreateGroup", id="alice")
    recorder = Member.create(b"recorder")
    welcome, tree, _, alice_safety = _admit(orange, "alice", recorder.key_package.to_bytes())
    group = Group.join(recorder, welcome, tree)
    assert group.safety_number == alice_safety
    assert group.members == [b"alice", b"recorder"]

    frames = FrameDecryptor(group)
    for frame, kind in ((KEYFRAME, "video"), (DELTA, "video"), (OPUS, "audio")):
        sealed = orange.encrypt("alice", frame, kind)  # type: ignore[arg-type]
        assert looks_encrypted(sealed) and sealed[: len(frame)] != frame
        assert frames.open(sealed) == frame

    # A third member: Orange commits the Add; the recorder follows to the same epoch.
    orange.new("bob")
    shared = of_type(orange.event("bob", "initialize", id="bob"), "shareKeyPackage")[0]
    bob_welcome, bob_tree, commit, alice_safety = _admit(orange, "alice", shared["keyPkg"])
    assert group.handle(commit) is True
    joined = orange.event(
        "bob", "recvMlsWelcome", welcome=bob_welcome, rtree=bob_tree, senderId="alice"
    )
    bob_safety = of_type(joined, "newSafetyNumber")[0]["hash"]
    assert group.safety_number == alice_safety == bob_safety
    assert group.members == [b"alice", b"recorder", b"bob"]
    for member in ("alice", "bob"):
        assert frames.open(orange.encrypt(member, KEYFRAME, "video")) == KEYFRAME
    assert frames.outcomes[Outcome.OPENED] == 5


def test_frames_it_cannot_open_are_never_passed_on(orange: OrangeWorkers) -> None:
    orange.new("alice")
    orange.event("alice", "initializeAndCreateGroup", id="alice")
    sealed = orange.encrypt("alice", KEYFRAME, "video")
    outsider = FrameDecryptor()  # not a member: no group at all
    assert outsider.open(sealed) is None and outsider.outcomes[Outcome.NOT_MEMBER] == 1
    assert outsider.open(DELTA) == DELTA  # plain media goes through untouched

    recorder = Member.create(b"recorder")
    welcome, tree, _, _ = _admit(orange, "alice", recorder.key_package.to_bytes())
    group = Group.join(recorder, welcome, tree)
    member = FrameDecryptor(group)
    fresh = orange.encrypt("alice", DELTA, "video")
    tampered = bytearray(fresh)
    tampered[-3] ^= 0x01
    assert member.open(bytes(tampered)) is None
    assert member.open(fresh[:-10]) is None  # truncated
    assert member.open(sealed) is None  # encrypted before the recorder joined
    assert member.outcomes[Outcome.UNREADABLE] == 3
    with pytest.raises(GroupError):
        group.open_application(fresh[1:] + b"\x00")


def test_outliving_its_admitter_it_commits_for_the_group_and_orange_follows(
    orange: OrangeWorkers,
) -> None:
    """Alice admits the recorder, then Bob; Alice leaves. Bob does not commit her Remove:
    the recorder, which was there before him, is the committer now. Its Remove and then
    its Add of a newcomer (Carol, admitted by its Welcome) must be accepted by Orange, and
    everyone must agree on the safety number."""
    orange.new("alice")
    orange.event("alice", "initializeAndCreateGroup", id="alice")
    recorder = Member.create(b"recorder")
    welcome, tree, _, _ = _admit(orange, "alice", recorder.key_package.to_bytes())
    group = Group.join(recorder, welcome, tree)
    orange.new("bob")
    shared = of_type(orange.event("bob", "initialize", id="bob"), "shareKeyPackage")[0]
    bob_welcome, bob_tree, commit, _ = _admit(orange, "alice", shared["keyPkg"])
    group.handle(commit)
    orange.event("bob", "recvMlsWelcome", welcome=bob_welcome, rtree=bob_tree, senderId="alice")

    assert not of_type(orange.event("bob", "userLeft", id="alice"), "sendMlsMessage")
    removal = group.commit(remove=[group.leaf_of(b"alice")])
    assert removal.welcome is None
    followed = orange.event("bob", "recvMlsMessage", msg=removal.commit, senderId="recorder")
    assert of_type(followed, "newSafetyNumber")[0]["hash"] == group.safety_number
    assert group.members == [b"recorder", b"bob"]

    orange.new("carol")
    shared = of_type(orange.event("carol", "initialize", id="carol"), "shareKeyPackage")[0]
    added = group.commit(add=[shared["keyPkg"]])
    assert added.welcome is not None
    bob_sees = orange.event("bob", "recvMlsMessage", msg=added.commit, senderId="recorder")
    carol_sees = orange.event(
        "carol",
        "recvMlsWelcome",
        welcome=added.welcome,
        rtree=added.ratchet_tree,
        senderId="recorder",
    )
    for outputs in (bob_sees, carol_sees):
        assert of_type(outputs, "newSafetyNumber")[0]["hash"] == group.safety_number
    frames = FrameDecryptor(group)
    for member in ("bob", "carol"):
        assert frames.open(orange.encrypt(member, KEYFRAME, "video")) == KEYFRAME
