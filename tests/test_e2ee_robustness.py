"""Malformed, replayed, wrong-epoch, wrong-group and truncated MLS messages and frames
(issue #12): each is a clear ``GroupError`` or a counted drop, never a crash and never a
decode of ciphertext; a refused handshake message leaves the group as it was.

The partners are two of our own members (the recorder never creates a group, so a
test-only founder starts one from the public pieces), always; and Orange Meets' own worker
in Node, skipped where absent. Hypothesis damages valid frames and Commits at random.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testbed.orange import OrangeWorkers, interop_dir, of_type

from bot.e2ee import crypto, schedule
from bot.e2ee.frames import MLS_PRIVATE_HEADER, FrameDecryptor, Outcome, prefix_length
from bot.e2ee.group import Group, GroupError, Member, WrongEpoch
from bot.e2ee.messages import (
    ContentType,
    FramedContent,
    GroupContext,
    MLSMessage,
    PrivateMessage,
    Sender,
)
from bot.e2ee.protect import protect_private
from bot.e2ee.state import Epoch
from bot.e2ee.tree import RatchetTree

KEYFRAME = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + bytes(range(200))
"""First bit 0: 10 bytes stay in the clear."""
OPUS = bytes([0xFC]) + bytes(range(60))
"""First bit 1: one byte stays in the clear."""
FOLDER = interop_dir()
needs_orange = pytest.mark.skipif(
    FOLDER is None,
    reason="Orange's MLS worker (../shared/interop/orange-e2ee, or $ORANGE_E2EE) or node is "
    "not on this machine",
)


# --- our own members -----------------------------------------------------------------------


def _founder(identity: bytes) -> Group:
    """A one-member group at epoch 0 (RFC 9420 §11), built as its creator would."""
    member = Member.create(identity)
    tree = RatchetTree([member.key_package.leaf_node])
    context = GroupContext(crypto.CIPHER_SUITE, os.urandom(16), 0, tree.tree_hash(), b"")
    _, secrets = schedule.epoch_secrets(os.urandom(32), schedule.NO_PSK, context.to_bytes())
    tag = schedule.confirmation_tag(secrets.confirmation_key, b"")
    interim = schedule.interim_transcript_hash(b"", tag)
    keys = {0: member.encryption_private}
    return Group(0, member.signature_private, keys, interim, Epoch.start(context, secrets, tree))


def _pair() -> tuple[Group, Group]:
    """Alice founds a group and admits the recorder: (alice, recorder)."""
    alice = _founder(b"alice")
    recorder = Member.create(b"recorder")
    committed = alice.commit(add=[recorder.key_package.to_bytes()])
    assert committed.welcome is not None
    return alice, Group.join(recorder, committed.welcome, committed.ratchet_tree)


def _newcomer() -> bytes:
    return Member.create(os.urandom(4)).key_package.to_bytes()


def _seal(sender: Group, frame: bytes) -> bytes:
    """``frame`` as Orange sends it: the clear prefix, then a PrivateMessage of the rest."""
    split, epoch = prefix_length(frame), sender.current
    content = FramedContent(
        sender.group_id,
        sender.epoch,
        Sender.member(sender.own_leaf),
        b"",
        ContentType.APPLICATION,
        frame[split:],
    )
    message = protect_private(
        content,
        group_context=epoch.context,
        sender_data_secret=epoch.secrets.sender_data_secret,
        secret_tree=epoch.secret_tree,
        signature_private_key=sender.signature_private,
    )
    return frame[:split] + MLSMessage(message).to_bytes()


def _state(group: Group) -> tuple[object, ...]:
    return group.epoch, group.safety_number, group.members, group.interim_transcript_hash


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= mask
    return bytes(damaged)


def _reframed(
    frame: bytes, change: Callable[[PrivateMessage], PrivateMessage], split: int | None = None
) -> bytes:
    """The frame (or, with ``split=0``, the message) with its PrivateMessage changed and
    re-encoded: a forger's edit."""
    split = prefix_length(frame) if split is None else split
    body = MLSMessage.from_bytes(frame[split:]).body
    assert isinstance(body, PrivateMessage)
    return frame[:split] + MLSMessage(change(body)).to_bytes()


def _dropped(frames: FrameDecryptor, group: Group, frame: bytes) -> None:
    """Not opened by the recorder: a counted UNREADABLE drop, a ``GroupError`` below."""
    before = frames.outcomes[Outcome.UNREADABLE]
    assert frames.open(frame) is None
    assert frames.outcomes[Outcome.UNREADABLE] == before + 1
    with pytest.raises(GroupError):
        group.open_application(frame[prefix_length(frame) :])


def _refused(group: Group, message: bytes, error: type[GroupError] = GroupError) -> None:
    """Refused as a handshake message, the group left exactly as it was."""
    before = _state(group)
    with pytest.raises(error):
        group.handle(message)
    assert _state(group) == before


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "malformed": lambda f: f[: prefix_length(f)] + MLS_PRIVATE_HEADER + b"\x07not mls",
    "truncated by one": lambda f: f[:-1],
    "truncated to half": lambda f: f[: len(f) // 2],
    "truncated after the header": lambda f: f[: prefix_length(f) + len(MLS_PRIVATE_HEADER)],
    "ciphertext bit": lambda f: _flip(f, len(f) - 3),
    "first ciphertext bit": lambda f: _reframed(
        f, lambda m: replace(m, ciphertext=_flip(m.ciphertext, 0))
    ),
    "sender data bit": lambda f: _reframed(
        f, lambda m: replace(m, encrypted_sender_data=_flip(m.encrypted_sender_data, 2))
    ),
    "group id": lambda f: _reframed(f, lambda m: replace(m, group_id=_flip(m.group_id, 0))),
    "epoch": lambda f: _reframed(f, lambda m: replace(m, epoch=m.epoch + 1)),
    "authenticated data": lambda f: _reframed(f, lambda m: replace(m, authenticated_data=b"x")),
    "content type": lambda f: _reframed(f, lambda m: replace(m, content_type=ContentType.COMMIT)),
    "trailing byte": lambda f: f + b"\x00",
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("original", [KEYFRAME, OPUS], ids=["keyframe", "opus"])
def test_a_damaged_frame_is_a_counted_drop(damage: str, original: bytes) -> None:
    alice, recorder = _pair()
    frames = FrameDecryptor(recorder)
    _dropped(frames, recorder, DAMAGE[damage](_seal(alice, original)))
    assert frames.open(_seal(alice, original)) == original  # the next frame still opens
    assert set(frames.outcomes) == {Outcome.UNREADABLE, Outcome.OPENED}


def test_a_replayed_frame_opens_once() -> None:
    alice, recorder = _pair()
    frames = FrameDecryptor(recorder)
    frame = _seal(alice, KEYFRAME)
    assert frames.open(frame) == KEYFRAME
    _dropped(frames, recorder, frame)


def test_frames_of_epochs_the_recorder_does_not_hold_are_dropped() -> None:
    alice, recorder = _pair()
    frames = FrameDecryptor(recorder)
    old = _seal(alice, KEYFRAME)  # epoch 1
    commits = [alice.commit(add=[_newcomer()]).commit for _ in range(3)]
    _dropped(frames, recorder, _seal(alice, OPUS))  # epoch 4: before the recorder follows
    for commit in commits:
        assert recorder.handle(commit)
    assert recorder.epoch == 4
    _dropped(frames, recorder, old)  # epoch 1: older than the two kept epochs
    with pytest.raises(WrongEpoch):
        recorder.open_application(old[10:])
    assert frames.open(_seal(alice, OPUS)) == OPUS


def test_a_frame_of_the_kept_previous_epoch_still_opens() -> None:
    alice, recorder = _pair()
    frames = FrameDecryptor(recorder)
    in_flight = _seal(alice, KEYFRAME)
    assert recorder.handle(alice.commit(add=[_newcomer()]).commit)
    assert frames.open(in_flight) == KEYFRAME


def test_a_frame_of_another_group_is_dropped() -> None:
    stranger, _ = _pair()
    alice, recorder = _pair()
    assert (stranger.epoch, stranger.own_leaf) == (alice.epoch, alice.own_leaf)
    _dropped(FrameDecryptor(recorder), recorder, _seal(stranger, KEYFRAME))


@pytest.mark.parametrize("original", [KEYFRAME, OPUS], ids=["keyframe", "opus"])
def test_a_frame_whose_prefix_length_bit_flipped_is_a_counted_drop(original: bytes) -> None:
    alice, recorder = _pair()
    frames = FrameDecryptor(recorder)
    assert frames.open(_flip(_seal(alice, original), 0, 0x80)) is None
    assert frames.outcomes == {Outcome.UNREADABLE: 1}


def test_a_damaged_frame_does_not_spend_the_genuine_frames_key() -> None:
    alice, recorder = _pair()
    frames = FrameDecryptor(recorder)
    frame = _seal(alice, KEYFRAME)
    assert frames.open(_flip(frame, len(frame) - 3)) is None
    assert frames.open(frame) == KEYFRAME


@functools.cache
def _shared_pair() -> tuple[Group, Group]:
    return _pair()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, 40),
    extra=st.binary(max_size=8),
    keyframe=st.booleans(),
)
def test_random_damage_to_a_frame_is_never_opened(
    flips: list[tuple[int, int]], cut: int, extra: bytes, keyframe: bool
) -> None:
    """Any change after the clear prefix and the MLS header: a counted drop, nothing else."""
    alice, recorder = _shared_pair()
    frame = _seal(alice, KEYFRAME if keyframe else OPUS)
    start = prefix_length(frame) + len(MLS_PRIVATE_HEADER)
    damaged = bytearray(frame[: len(frame) - cut] + extra)
    for position, mask in flips:
        damaged[start + position % (len(damaged) - start)] ^= mask
    if bytes(damaged) == frame:
        return
    _dropped(FrameDecryptor(recorder), recorder, bytes(damaged))


# --- handshake messages from our own members ------------------------------------------------


def test_malformed_commits_are_refused_and_change_nothing() -> None:
    alice, recorder = _pair()
    commit = alice.commit(add=[_newcomer()]).commit
    for message in (b"", b"\x00", MLS_PRIVATE_HEADER, os.urandom(200), commit + b"\x00"):
        _refused(recorder, message)
    for length in range(len(commit)):
        _refused(recorder, commit[:length])
    _refused(recorder, _seal(alice, OPUS)[1:])  # application data is not a handshake
    for index in (10, 30, len(commit) // 2, len(commit) - 1):
        _refused(recorder, _flip(commit, index))
    assert recorder.handle(commit)  # the genuine Commit, after all of that
    assert recorder.safety_number == alice.safety_number


def test_a_replayed_commit_is_refused() -> None:
    alice, recorder = _pair()
    commit = alice.commit(add=[_newcomer()]).commit
    assert recorder.handle(commit)
    _refused(recorder, commit, WrongEpoch)
    assert recorder.safety_number == alice.safety_number


def test_a_commit_of_another_group_is_refused() -> None:
    stranger, _ = _pair()
    _, recorder = _pair()
    _refused(recorder, stranger.commit(add=[_newcomer()]).commit)


def test_commits_for_a_wrong_epoch_are_refused() -> None:
    alice, recorder = _pair()
    first = alice.commit(add=[_newcomer()]).commit
    second = alice.commit(add=[_newcomer()]).commit
    _refused(recorder, second, WrongEpoch)  # a future epoch: the first is still to come
    _refused(recorder, _reframed(second, lambda m: replace(m, epoch=m.epoch - 1), split=0))
    assert recorder.handle(first) and recorder.handle(second)
    assert recorder.safety_number == alice.safety_number


def test_a_damaged_commit_does_not_spend_the_genuine_commits_key() -> None:
    alice, recorder = _pair()
    commit = alice.commit(add=[_newcomer()]).commit
    _refused(recorder, _flip(commit, len(commit) - 3))
    assert recorder.handle(commit)
    assert recorder.safety_number == alice.safety_number


@functools.cache
def _pending_commit() -> tuple[Group, bytes]:
    alice, recorder = _pair()
    return recorder, alice.commit(add=[_newcomer()]).commit


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, 40),
    extra=st.binary(max_size=8),
)
def test_random_damage_to_a_commit_changes_nothing(
    flips: list[tuple[int, int]], cut: int, extra: bytes
) -> None:
    recorder, commit = _pending_commit()
    damaged = bytearray(commit[: len(commit) - cut] + extra)
    for position, mask in flips:
        damaged[position % len(damaged)] ^= mask
    if bytes(damaged) != commit:
        _refused(recorder, bytes(damaged))


def test_a_truncated_welcome_is_refused() -> None:
    alice = _founder(b"alice")
    recorder = Member.create(b"recorder")
    committed = alice.commit(add=[recorder.key_package.to_bytes()])
    assert committed.welcome is not None
    for length in range(len(committed.welcome)):
        with pytest.raises(GroupError):
            Group.join(recorder, committed.welcome[:length], committed.ratchet_tree)
    for length in range(len(committed.ratchet_tree)):
        with pytest.raises(GroupError):
            Group.join(recorder, committed.welcome, committed.ratchet_tree[:length])
    joined = Group.join(recorder, committed.welcome, committed.ratchet_tree)
    assert joined.safety_number == alice.safety_number


def test_a_welcome_with_a_tampered_ratchet_tree_is_refused() -> None:
    alice = _founder(b"alice")
    before = alice.current.tree.to_bytes()
    recorder = Member.create(b"recorder")
    committed = alice.commit(add=[recorder.key_package.to_bytes()])
    assert committed.welcome is not None
    tree = committed.ratchet_tree
    for index in range(len(tree)):  # one bit of every byte
        with pytest.raises(GroupError):
            Group.join(recorder, committed.welcome, _flip(tree, index, 1 << (index % 8)))
    with pytest.raises(GroupError, match="tree"):
        Group.join(recorder, committed.welcome, before)  # the epoch before's tree


# --- Orange Meets' worker -------------------------------------------------------------------


@pytest.fixture
def orange() -> Iterator[OrangeWorkers]:
    assert FOLDER is not None
    with OrangeWorkers(FOLDER) as workers:
        yield workers


def _orange_admit(orange: OrangeWorkers, committer: str, key_package: bytes) -> list[bytes]:
    """The committer adds a KeyPackage: [commit, welcome, ratchet tree, safety number]."""
    outputs = orange.event(committer, "userJoined", keyPkg=key_package)
    welcome = of_type(outputs, "sendMlsWelcome")[0]
    commit = of_type(outputs, "sendMlsMessage")[0]["msg"]
    safety = of_type(outputs, "newSafetyNumber")[0]["hash"]
    return [commit, welcome["welcome"], welcome["rtree"], safety]


def _orange_group(orange: OrangeWorkers, name: str) -> tuple[Member, list[bytes]]:
    """``name`` creates an Orange group and adds the recorder's KeyPackage."""
    orange.new(name)
    orange.event(name, "initializeAndCreateGroup", id=name)
    recorder = Member.create(b"recorder")
    return recorder, _orange_admit(orange, name, recorder.key_package.to_bytes())


@needs_orange
def test_orange_frames_the_recorder_cannot_open_are_counted_drops(orange: OrangeWorkers) -> None:
    member, (_, welcome, tree, _) = _orange_group(orange, "alice")
    _orange_group(orange, "carol")
    recorder = Group.join(member, welcome, tree)
    frames = FrameDecryptor(recorder)

    def fresh() -> bytes:
        return orange.encrypt("alice", KEYFRAME, "video")

    damaged = [damage(fresh()) for damage in DAMAGE.values()]
    replayed, old = fresh(), fresh()
    assert frames.open(replayed) == KEYFRAME
    for frame in [*damaged, replayed, orange.encrypt("carol", KEYFRAME, "video")]:
        _dropped(frames, recorder, frame)

    commits = [_orange_admit(orange, "alice", _newcomer())[0] for _ in range(3)]
    _dropped(frames, recorder, fresh())  # epoch 4, the recorder still at 1
    for commit in commits:
        assert recorder.handle(commit)
    _dropped(frames, recorder, old)  # epoch 1, older than the kept epochs
    assert frames.open(fresh()) == KEYFRAME
    assert frames.outcomes == {
        Outcome.OPENED: 2,
        Outcome.UNREADABLE: len(DAMAGE) + 4,
    }


@needs_orange
def test_orange_handshake_messages_that_must_be_refused_change_nothing(
    orange: OrangeWorkers,
) -> None:
    member, (_, welcome, tree, _) = _orange_group(orange, "alice")
    _, (foreign, _, _, _) = _orange_group(orange, "carol")
    for length in range(len(welcome)):
        with pytest.raises(GroupError):
            Group.join(member, welcome[:length], tree)
    for index in range(len(tree)):
        with pytest.raises(GroupError):
            Group.join(member, welcome, _flip(tree, index, 1 << (index % 8)))
    recorder = Group.join(member, welcome, tree)

    first = _orange_admit(orange, "alice", _newcomer())[0]
    second, _, _, safety = _orange_admit(orange, "alice", _newcomer())
    _refused(recorder, foreign)  # carol's group
    _refused(recorder, second, WrongEpoch)
    for index in (len(first) // 2, len(first) - 3):
        _refused(recorder, _flip(first, index))
    for length in range(0, len(first), 11):
        _refused(recorder, first[:length])
    assert recorder.handle(first)
    _refused(recorder, first, WrongEpoch)  # replayed
    assert recorder.handle(second)
    assert recorder.safety_number == safety
