"""Reading the ICE socket in batches, each datagram stamped with the kernel's arrival time.

A recorder has no one to answer in real time, yet read on readiness its event loop wakes
for every packet: 186 times a second in a two-party call measured on the 2-core VM,
where a packet then cost about 300 us of CPU against 18-23 us for its handling in a
tight loop (most likely the wake-up and running cold; BENCHMARKS.md). Reading what has
arrived every ``interval`` instead wakes the loop at most that often: at 50 ms a
tracks-only recording's steady CPU fell from 0.054-0.072 to 0.037-0.039 CPU-s per s.
The delay it adds is no one's: NACKs and keyframe requests go out at most an interval
later (the jitter buffer waits 48 packets for a retransmission), and each packet
keeps the time it arrived, from the kernel (``SO_TIMESTAMPNS``), so bandwidth estimates
and the arrival clock see the network's timing, not the batching's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("bot.rtc.datagrams")

_SO_TIMESTAMPNS = 35
"""Linux's ``SO_TIMESTAMPNS`` (also its control message type); Python does not name it."""
_TIMESPEC = struct.Struct("@qq")
MAX_PER_BATCH = 4096
"""Datagrams handled in one turn at most: a flood must not hold the loop."""
RECEIVE_BUFFER = 1 << 20
"""Room in the kernel for what arrives between two reads (asked for; the kernel may cap)."""

Deliver = Callable[[bytes, tuple[object, ...], float], None]
"""Takes ``(datagram, source address, arrival as Unix seconds)``."""


class BatchedDatagramReader:
    """Reads a UDP socket every ``interval`` seconds through its own descriptor.

    ``fileno`` is duplicated, so the socket outlives whoever owns the original
    descriptor until ``close``; the owner must have stopped reading it. Datagrams that
    were waiting before the reader started have no kernel time: they carry the time
    they are read, as do those that arrive before Linux has turned its receive stamps
    on (it does so lazily when the first socket asks; one CI run saw a 0.3-s wait).
    """

    def __init__(self, fileno: int, deliver: Deliver, interval: float) -> None:
        self._socket = socket.socket(fileno=os.dup(fileno))
        self._socket.setblocking(False)
        self._stamped = sys.platform == "linux"
        if self._stamped:
            self._socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._deliver = deliver
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._next: asyncio.TimerHandle | None = None
        self.batches = 0
        self.datagrams = 0
        self._loop.add_reader(self._socket.fileno(), self._read)

    def _read(self) -> None:
        """Handle everything that has arrived, then sleep ``interval`` before the next.

        Nothing that one datagram does stops the reading: an error handling it is logged
        and the next is read, as when the loop read each on readiness."""
        self._loop.remove_reader(self._socket.fileno())
        self.batches += 1
        ancillary = socket.CMSG_SPACE(_TIMESPEC.size) if self._stamped else 0
        for _ in range(MAX_PER_BATCH):
            try:
                data, control, _, address = self._socket.recvmsg(65536, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if self._socket.fileno() < 0 or exc.errno == errno.EBADF:
                    return  # closed: nothing more to read
                log.warning("rtc.datagram_read_failed", error=f"{type(exc).__name__}: {exc}")
                break
            self.datagrams += 1
            try:
                self._deliver(data, address, _arrival(control))
            except Exception as exc:
                log.error("rtc.datagram_handler_failed", error=f"{type(exc).__name__}: {exc}")
        self._next = self._loop.call_later(self._interval, self._resume)

    def _resume(self) -> None:
        self._next = None
        if self._socket.fileno() >= 0:
            self._loop.add_reader(self._socket.fileno(), self._read)

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._socket.fileno() >= 0:
            self._loop.remove_reader(self._socket.fileno())
            self._socket.close()


def _arrival(control: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in control:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return int(seconds) + int(nanoseconds) / 1e9
    return time.time()
