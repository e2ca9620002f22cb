"""Encrypted media frames as Orange Meets sends them, opened before they are decoded.

Every encoded frame, audio and video, is ``clear prefix || MLSMessage(PrivateMessage)``:
the prefix is 10 bytes when ``frame[0] >> 7 == 0`` (a VP8 keyframe's first bit; the same
rule is applied to Opus), else 1 byte, and the PrivateMessage's application data is the
rest of the original frame (docs/e2ee-mls-choice.md, ``mls_ops.rs`` ``split_vp8_header``).
A sender that is not yet in a group sends the prefix alone.

A frame that cannot be opened is never handed to the decoder: decoding ciphertext as VP8
or Opus would put noise in a medical record. It is dropped and counted by why
(``Outcome``), and the counts say whether the call is encrypted for this recorder.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Final, Protocol

KEYFRAME_PREFIX: Final = 10
DELTA_PREFIX: Final = 1
MLS_PRIVATE_HEADER: Final = b"\x00\x01\x00\x02"
"""An MLSMessage's first bytes when it is a PrivateMessage: version mls10, wire format 2."""


class Outcome(StrEnum):
    OPENED = "opened"
    PLAIN = "plain"
    """No MLS message after the prefix: media that was never encrypted."""
    NOT_MEMBER = "not_member"
    """Encrypted, and this recorder holds no key at all (not in the group yet)."""
    UNREADABLE = "unreadable"
    """Encrypted for an epoch, group or generation this recorder cannot open, or forged."""
    PREFIX_ONLY = "prefix_only"
    """Only the clear prefix: the sender is not in a group yet."""


class Opener(Protocol):
    """What opens an MLS application message (the group state): raises ``ValueError``
    (DecodeError, ProtectionError, ...) when it cannot."""

    def open_application(self, message: bytes) -> bytes: ...


def prefix_length(frame: bytes) -> int:
    return KEYFRAME_PREFIX if frame[0] >> 7 == 0 else DELTA_PREFIX


def looks_encrypted(frame: bytes) -> bool:
    """Whether a frame carries an MLS PrivateMessage after its clear prefix.

    A plain VP8 or Opus frame has these four bytes there only by chance (2^-32), so a
    recorder that is not configured for E2EE can still tell it is being sent ciphertext.
    """
    if not frame:
        return False
    start = prefix_length(frame)
    return frame[start : start + len(MLS_PRIVATE_HEADER)] == MLS_PRIVATE_HEADER


class FrameDecryptor:
    """Opens frames for one call; ``open`` is called from aiortc's decoder threads."""

    def __init__(
        self, opener: Opener | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._opener = opener
        self._clock = clock
        self._lock = threading.Lock()
        self._unreadable_since: float | None = None
        self.outcomes: Counter[Outcome] = Counter()

    def use(self, opener: Opener) -> None:
        """The group, once joined (a Welcome processed): frames open from now on."""
        self._opener = opener

    def open(self, frame: bytes) -> bytes | None:
        """The frame as it was before encryption, or None when it must not be decoded."""
        outcome, opened = self._open(frame)
        with self._lock:
            self.outcomes[outcome] += 1
            if opened is not None:
                self._unreadable_since = None
            elif self._unreadable_since is None:
                self._unreadable_since = self._clock()
        return opened

    def unreadable_for(self) -> float:
        """Seconds since frames stopped opening (0 while they open, or before any came)."""
        with self._lock:
            since = self._unreadable_since
        return 0.0 if since is None else self._clock() - since

    def _open(self, frame: bytes) -> tuple[Outcome, bytes | None]:
        if not frame:
            return Outcome.UNREADABLE, None
        split = prefix_length(frame)
        if len(frame) <= split:
            return Outcome.PREFIX_ONLY, None
        if not looks_encrypted(frame):
            other = DELTA_PREFIX if split == KEYFRAME_PREFIX else KEYFRAME_PREFIX
            if frame[other : other + len(MLS_PRIVATE_HEADER)] == MLS_PRIVATE_HEADER:
                return Outcome.UNREADABLE, None  # the prefix-length bit was changed
            return Outcome.PLAIN, frame
        opener = self._opener
        if opener is None:
            return Outcome.NOT_MEMBER, None
        try:
            content = opener.open_application(frame[split:])
        except ValueError:
            return Outcome.UNREADABLE, None
        return Outcome.OPENED, frame[:split] + content
