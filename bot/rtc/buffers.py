"""The receiver tap's own buffers: audio put back in order, and bounded frame queues.

Plain Python, no aiortc: the tap hands the queues to aiortc (``aiortc_compat``) in place
of its unbounded ones, and runs audio packets through ``AudioReorder`` itself.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from typing import Any

from aiortc.utils import uint16_add


class AudioReorder:
    """Puts audio packets back in sequence order before they are decoded.

    Jitter larger than the packet interval (20 ms) reorders packets on real networks. A
    packet that arrives ahead of a missing one waits until the missing one comes, or until
    ``wait`` packets are waiting (about ``wait`` x 20 ms): then the missing one is given
    up and arrives, if ever, too late to be used. Opus decodes best in order, and the
    mixer would otherwise see time run backwards.
    """

    def __init__(self, wait: int = 8) -> None:
        self._wait = wait
        self._next: int | None = None
        self._held: dict[int, Any] = {}
        self.given_up = 0
        self.too_late = 0

    def push(self, packet: Any) -> list[Any]:
        """The packets that can go on now, in order (none, this one, or several)."""
        seq: int = packet.sequence_number
        if self._next is None:
            self._next = seq
        if 0 < uint16_add(self._next, -seq) < 0x8000:  # before the next one expected
            self.too_late += 1
            return []
        self._held[seq] = packet
        ready = []
        while self._held:
            while self._next in self._held:
                ready.append(self._held.pop(self._next))
                self._next = uint16_add(self._next, 1)
            if len(self._held) <= self._wait:
                break
            expected = self._next
            skip_to = min(self._held, key=lambda s: uint16_add(s, -expected))
            self.given_up += uint16_add(skip_to, -expected)
            self._next = skip_to
        return ready


FrameOpener = Callable[[bytes], bytes | None]
"""Turns an encoded frame as received into the frame to decode, or None to drop it: the
end-to-end decryption (``bot.e2ee.frames``), which also keeps ciphertext it cannot open
from ever reaching a decoder."""
EncodedSink = Callable[[int, bytes], None]
"""Takes each opened encoded frame, ``(extended RTP timestamp, data)``: the track archive
(``bot.recording.archive``). Called on the decoder thread when frames are decoded too,
else on the event loop as the frame completes."""


class BoundedDecoderQueue(queue.Queue[Any]):
    """aiortc's decoder input queue, bounded: when the decoder thread cannot keep up (a
    starved machine), the oldest encoded frames go instead of memory growing without
    limit. A video frame lost this way makes the next ones fail to decode, and aiortc
    then asks for a keyframe by itself.

    With an ``opener``, each frame is opened as the decoder thread takes it (off the
    event loop) and dropped when it cannot be (``unopened``). Each opened frame goes to
    the ``archive`` sink if one is set. With ``decode`` False (the track archive without
    a composite) nothing is queued: each frame is opened and archived as aiortc hands it
    over, on the event loop, which costs less than waking a thread for every frame, and
    aiortc's decoder thread never decodes.
    """

    def __init__(
        self, limit: int, opener: FrameOpener | None = None, *, decode: bool = True
    ) -> None:
        super().__init__()
        self._limit = limit
        self._opener = opener
        self._decode = decode
        self.archive: EncodedSink | None = None
        self.dropped = 0
        self.unopened = 0
        self.last_opened = 0.0
        self.last_unopened = 0.0
        """``time.monotonic()`` of the last frame opened, and of the last one that was not."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None and not self._decode:
            self._open_and_archive(item)
            return
        while item is not None and self.qsize() >= self._limit:
            try:
                oldest = super().get(block=False)  # dropped unopened: no key spent on it
            except queue.Empty:
                break
            if oldest is None:  # the stop sentinel always goes through
                super().put(oldest)
                break
            self.dropped += 1
        super().put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        while True:
            item = super().get(block, timeout)
            if item is None or self._open_and_archive(item):
                return item

    def _open_and_archive(self, item: Any) -> bool:
        """Open the frame in place and hand it to the archive; False if it cannot be
        opened (it goes nowhere)."""
        _, encoded = item
        if self._opener is not None:
            opened = self._opener(encoded.data)
            if opened is None:
                self.unopened += 1
                self.last_unopened = time.monotonic()
                return False
            encoded.data = opened
            self.last_opened = time.monotonic()
        archive = self.archive
        if archive is not None:
            archive(encoded.timestamp, encoded.data)
        return True


class DroppingFrameQueue(asyncio.Queue[Any]):
    """The decoded-frame queue between aiortc's decoder thread and our reader, bounded.

    The reader drains it as fast as the event loop runs; on a starved machine the oldest
    decoded frames go instead of memory growing. ``None`` (end of track) always fits.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self.dropped = 0

    async def put(self, item: Any) -> None:
        while item is not None and self.qsize() >= self._limit:
            self.get_nowait()
            self.dropped += 1
        self.put_nowait(item)
