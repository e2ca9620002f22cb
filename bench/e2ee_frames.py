"""What opening end-to-end-encrypted frames costs the recorder (issue #12), in CPU.

Usage: ``.venv/bin/python -m bench.e2ee_frames [--seconds 10] [--runs 5]``

Two members running Orange Meets' own MLS worker (openmls in WASM, in Node) send what a
two-party call sends, each: VP8-like video at 30 fps of about 5 KB a frame (a keyframe,
10 bytes in the clear, every second; deltas, 1 byte in the clear, otherwise) and Opus-like
audio at 50 fps of about 100 B. Their frames are encrypted once, through the worker's own
``encryptStream`` path, in send order. Then, ``--runs`` times, a fresh recorder group
(joined from the same Welcome, so every run opens the same frames with unused keys) opens
every frame with ``FrameDecryptor``, in send order, and only our side is timed
(``time.process_time``: this process's user + system CPU). Every opened frame is checked
against what was sent, after the clock stops.

The same plain frames then go through ``looks_encrypted`` alone and through a
``FrameDecryptor`` that holds no group (the receive path of every unencrypted call: the
check, a lock, a counter): what E2EE support costs a call that does not use it. Figures
are medians of the runs. Without Orange's worker or Node it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from testbed.orange import Kind, OrangeWorkers, interop_dir, of_type

from bench.measure import machine_summary, median
from bot.e2ee.frames import FrameDecryptor, Outcome, looks_encrypted
from bot.e2ee.group import Group, Member

SENDERS: Final = ("alice", "bob")
VIDEO_FPS: Final = 30
AUDIO_FPS: Final = 50
VIDEO_BYTES: Final = 5000
AUDIO_BYTES: Final = 100
KINDS: Final = ("video", "audio")
PLAIN_REPEATS: Final = 200
"""Passes over the plain frames: one check is well under a microsecond."""


@dataclass(frozen=True)
class Frame:
    """One frame as sent (``plain``) and as it travels (``sealed``)."""

    at: float
    sender: str
    kind: Kind
    plain: bytes
    sealed: bytes = b""


@dataclass(frozen=True)
class Joining:
    """What a fresh recorder group needs: its KeyPackage's keys, the Welcome and tree
    Alice sent, and the Commit that admitted Bob after it."""

    member: Member
    welcome: bytes
    ratchet_tree: bytes
    commit: bytes

    def group(self) -> Group:
        group = Group.join(self.member, self.welcome, self.ratchet_tree)
        group.handle(self.commit)
        return group


def _plain_frames(sender: str, seconds: float, rng: random.Random) -> list[Frame]:
    """One sender's media in send order: video first byte 0x10 for a keyframe (top bit
    0: a 10-byte clear prefix), 0x91 for a delta (1 byte); audio a CELT TOC byte."""
    frames = []
    for n in range(int(seconds * VIDEO_FPS)):
        size = rng.randint(VIDEO_BYTES * 9 // 10, VIDEO_BYTES * 11 // 10)
        first = 0x10 if n % VIDEO_FPS == 0 else 0x91
        frames.append(Frame(n / VIDEO_FPS, sender, "video", bytes([first]) + rng.randbytes(size)))
    for n in range(int(seconds * AUDIO_FPS)):
        size = rng.randint(AUDIO_BYTES * 8 // 10, AUDIO_BYTES * 12 // 10)
        frames.append(Frame(n / AUDIO_FPS, sender, "audio", b"\xfc" + rng.randbytes(size)))
    return frames


def _call(orange: OrangeWorkers) -> Joining:
    """Alice creates the group and admits the recorder, then Bob (who joins)."""
    recorder = Member.create(b"recorder")
    orange.new("alice")
    orange.event("alice", "initializeAndCreateGroup", id="alice")
    admitted = orange.event("alice", "userJoined", keyPkg=recorder.key_package.to_bytes())
    welcome = of_type(admitted, "sendMlsWelcome")[0]
    orange.new("bob")
    shared = of_type(orange.event("bob", "initialize", id="bob"), "shareKeyPackage")[0]
    outputs = orange.event("alice", "userJoined", keyPkg=shared["keyPkg"])
    bob = of_type(outputs, "sendMlsWelcome")[0]
    orange.event(
        "bob", "recvMlsWelcome", welcome=bob["welcome"], rtree=bob["rtree"], senderId="alice"
    )
    commit = of_type(outputs, "sendMlsMessage")[0]["msg"]
    return Joining(recorder, welcome["welcome"], welcome["rtree"], commit)


def _encrypted(orange: OrangeWorkers, seconds: float) -> list[Frame]:
    rng = random.Random(12)
    plain = [frame for sender in SENDERS for frame in _plain_frames(sender, seconds, rng)]
    plain.sort(key=lambda frame: (frame.at, frame.sender, frame.kind))
    return [
        Frame(f.at, f.sender, f.kind, f.plain, orange.encrypt(f.sender, f.plain, f.kind))
        for f in plain
    ]


def _open_run(joining: Joining, frames: Sequence[Frame]) -> dict[str, float]:
    """CPU seconds to open every frame, in all and by kind, with a fresh group."""
    decryptor = FrameDecryptor(joining.group())
    spent = {"video": 0.0, "audio": 0.0}
    opened = []
    clock = time.process_time
    start = clock()
    for frame in frames:
        before = clock()
        opened.append(decryptor.open(frame.sealed))
        spent[frame.kind] += clock() - before
    spent["all"] = clock() - start
    wrong = sum(got != frame.plain for got, frame in zip(opened, frames, strict=True))
    if wrong or decryptor.outcomes[Outcome.OPENED] != len(frames):
        raise SystemExit(f"{wrong} frames did not open to what was sent: {decryptor.outcomes}")
    return spent


def _plain_run(frames: Sequence[Frame]) -> tuple[float, float]:
    """CPU seconds per plain frame: ``looks_encrypted`` alone, and a member-less
    ``FrameDecryptor.open`` (what the receive path runs for an unencrypted call)."""
    plain = [frame.plain for frame in frames]
    clock = time.process_time
    start = clock()
    for _ in range(PLAIN_REPEATS):
        for data in plain:
            looks_encrypted(data)
    checked = clock() - start
    decryptor = FrameDecryptor()
    start = clock()
    for _ in range(PLAIN_REPEATS):
        for data in plain:
            decryptor.open(data)
    passed = clock() - start
    count = PLAIN_REPEATS * len(plain)
    assert decryptor.outcomes == {Outcome.PLAIN: count}
    return checked / count, passed / count


def measure(seconds: float, runs: int) -> str:
    folder = interop_dir()
    if folder is None:
        return (
            "skipped: Orange's MLS worker (../shared/interop/orange-e2ee, or $ORANGE_E2EE) "
            "or node is not on this machine; nothing measured"
        )
    with OrangeWorkers(folder) as orange:
        joining = _call(orange)
        frames = _encrypted(orange, seconds)
    opens = [_open_run(joining, frames) for _ in range(runs)]
    plains = [_plain_run(frames) for _ in range(runs)]
    return _report(seconds, frames, opens, plains)


def _report(
    seconds: float,
    frames: Sequence[Frame],
    opens: Sequence[dict[str, float]],
    plains: Sequence[tuple[float, float]],
) -> str:
    count = {kind: sum(f.kind == kind for f in frames) for kind in KINDS}
    count["all"] = len(frames)
    size = {k: sum(len(f.sealed) for f in frames if f.kind == k) / count[k] for k in KINDS}
    lines = [
        f"E2EE frame opening: {len(SENDERS)} senders x {seconds:g} media s, Orange's worker "
        f"(openmls 0.7.1 WASM) encrypting, median of {len(opens)} runs, process CPU",
        f"frames: {count['video']} video (~{size['video']:.0f} B sealed), "
        f"{count['audio']} audio (~{size['audio']:.0f} B sealed)",
    ]
    for kind in ("video", "audio", "all"):
        spent = median([run[kind] for run in opens])
        lines.append(
            f"open {kind:5}: {spent / count[kind] * 1e6:8.1f} us per frame, "
            f"{spent / seconds:.5f} CPU-s per media s (two senders)"
        )
    checked, passed = median([p[0] for p in plains]), median([p[1] for p in plains])
    per_second = count["all"] / seconds
    lines += [
        f"plain, looks_encrypted only: {checked * 1e6:.3f} us per frame, "
        f"{checked * per_second:.7f} CPU-s per media s (two senders)",
        f"plain, FrameDecryptor.open without a group: {passed * 1e6:.3f} us per frame, "
        f"{passed * per_second:.7f} CPU-s per media s (two senders)",
        machine_summary(),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2ee_frames", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="media seconds per sender")
    parser.add_argument("--runs", type=int, default=5, help="timed passes over the frames")
    args = parser.parse_args(argv)
    print(measure(args.seconds, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
