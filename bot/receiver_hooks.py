"""Every use of aiortc's private API by the recorder, in one place.

aiortc 1.16 gives no public way to read RTCP sender reports' RTP half, to see a packet's
arrival before its jitter buffer, to keep real RTP timestamps on decoded frames, to route
packets by the MID header extension, or to ask for a keyframe. Each hook below wraps one
private method on one instance; none changes aiortc's behaviour beyond what is described.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtcpSrPacket
from aiortc.utils import uint16_add

from bot.media.clock import StreamClock


class _ExtendingTimestampMapper:
    """Stands in for aiortc's TimestampMapper: frames keep their extended RTP timestamp.

    aiortc's mapper rebases to 0 and turns a step back into a 13-hour jump forwards.
    """

    def __init__(self, clock: StreamClock) -> None:
        self._clock = clock

    def map(self, timestamp: int) -> int:
        return self._clock.frame_timestamp(timestamp)


def attach_clock(
    receiver: Any, clock: StreamClock, on_packet: Callable[[int], None] | None = None
) -> None:
    """Feed a receiver's packet arrivals and sender reports to ``clock``.

    ``on_packet(ssrc)`` runs for every RTP packet, on the event loop, before aiortc's
    jitter buffer (used for keyframe requests and liveness).
    """
    receiver._RTCRtpReceiver__timestamp_mapper = _ExtendingTimestampMapper(clock)
    handle_rtp: Callable[..., Awaitable[None]] = receiver._handle_rtp_packet
    handle_rtcp: Callable[[Any], Awaitable[None]] = receiver._handle_rtcp_packet

    async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
        clock.on_packet(packet.ssrc, packet.timestamp, time.time())
        if on_packet is not None:
            on_packet(packet.ssrc)
        await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

    async def on_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            clock.on_sender_report(
                packet.ssrc, packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp
            )
        await handle_rtcp(packet)

    receiver._handle_rtp_packet = on_rtp
    receiver._handle_rtcp_packet = on_rtcp


def route_by_mid(dtls_transport: Any) -> None:
    """Route RTP by the MID header extension before SSRC and payload type.

    aiortc keeps a MID table but never reads it, so with several same-kind tracks and no
    ``a=ssrc`` lines every packet is dropped. Learning the SSRC from the MID also routes
    the stream's sender reports, which aiortc routes by SSRC only.
    """
    router = dtls_transport._rtp_router
    if getattr(router, "_routes_by_mid", False):
        return
    route_by_ssrc: Callable[[Any], Any] = router.route_rtp

    def route(packet: Any) -> Any:
        mid = packet.extensions.mid
        if mid is not None:
            receiver = router.mid_table.get(mid)
            if receiver is not None:
                router.ssrc_table[packet.ssrc] = receiver
                return receiver
        return route_by_ssrc(packet)

    router.route_rtp = route
    router._routes_by_mid = True


def discard_media(receiver: Any) -> None:
    """Drop every packet this receiver gets, before parsing or decoding (a track the
    recorder declined: its codec cannot be decoded)."""
    receiver._enabled = False


def request_keyframe(receiver: Any, ssrc: int) -> asyncio.Task[None]:
    """Send a PLI for ``ssrc``: aiortc never asks for a keyframe when a track starts."""
    return asyncio.ensure_future(receiver._send_rtcp_pli(ssrc))


async def probe_ice_path(dtls_transport: Any, answer_within: float) -> bool | None:
    """One STUN binding check on the nominated ICE pair: is the path alive right now?

    aiortc notices a dead path only when consent expires (about 30 s), and says nothing
    while media is merely absent (a publisher may be muted or gone, which Cloudflare does
    not signal). A check answered proves the path; None means there is no path to check
    (not connected yet, or already closed).
    """
    connection = dtls_transport.transport._connection
    pairs = list(connection._nominated.values())
    if not pairs or connection.remote_password is None:
        return None
    pair = pairs[0]
    request = connection.build_request(pair, nominate=False)
    try:
        await asyncio.wait_for(
            pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=connection.remote_password.encode("utf8"),
                retransmissions=0,
            ),
            answer_within,
        )
    except (TimeoutError, ConnectionError, OSError):
        return False
    except Exception:  # aioice's TransactionError (failed or timed out transaction)
        return False
    return True


class _AudioPassThrough:
    """Every audio packet is a whole frame (Opus, G.711): hand it on at once.

    aiortc's audio jitter buffer holds four frames back and, when a packet is lost for
    good, stalls until 16 later packets have arrived (320 ms of silence per loss). Packets
    reach this one already in order (``_AudioReorder``); jitter is absorbed downstream,
    where frames are placed by timestamp.
    """

    capacity = 16

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


class _AudioReorder:
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


class _LossTolerantJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, but a lost packet is given up after ``give_up_after``
    later packets instead of after the whole capacity (512 packets: seconds of frozen
    picture per unrecovered loss), with a keyframe request.
    """

    def __init__(self, capacity: int, give_up_after: int) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=True)
        self._give_up_after = give_up_after

    def add(self, packet: Any) -> tuple[bool, Any]:
        pli, frame = super().add(packet)
        origin = self._origin
        if frame is not None or origin is None:
            return pli, frame
        behind = uint16_add(packet.sequence_number, -origin)
        if behind < self._give_up_after or behind >= self.capacity:
            return pli, frame
        if self.smart_remove(behind - self._give_up_after + 1):
            self._origin = packet.sequence_number
        self._drop_partial_frame()
        return True, self._remove_frame(packet.sequence_number)

    def _drop_partial_frame(self) -> None:
        """The frame now at the front may have lost its first packets: drop it too (the
        decoder needs the keyframe asked for anyway)."""
        assert self._origin is not None
        first = self._packets[self._origin % self.capacity]
        if first is None:
            return
        for _ in range(self.capacity):
            head = self._packets[self._origin % self.capacity]
            if head is None or head.timestamp != first.timestamp:
                return
            self.remove(1)


def tolerate_loss(receiver: Any, kind: str) -> None:
    """Swap the receiver's jitter buffer for one that gives up on lost packets sooner.

    Retransmissions (NACK, video only) get ``48`` packets' time, a few round trips. Audio
    is put back in order first (``_AudioReorder``). Install before ``attach_clock``, so
    that packets are timed when they arrive, not when they leave the reordering.
    """
    if kind != "audio":
        receiver._RTCRtpReceiver__jitter_buffer = _LossTolerantJitterBuffer(512, 48)
        return
    receiver._RTCRtpReceiver__jitter_buffer = _AudioPassThrough()
    reorder = _AudioReorder()
    handle_rtp: Callable[..., Awaitable[None]] = receiver._handle_rtp_packet

    async def in_order(packet: Any, arrival_time_ms: int) -> None:
        for ready in reorder.push(packet):
            await handle_rtp(ready, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = in_order


class _BoundedDecoderQueue(queue.Queue[Any]):
    """aiortc's decoder input queue, bounded: when the decoder thread cannot keep up (a
    starved machine), the oldest encoded frames go instead of memory growing without
    limit. A video frame lost this way makes the next ones fail to decode, and aiortc
    then asks for a keyframe by itself.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self.dropped = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        while item is not None and self.qsize() >= self._limit:
            try:
                oldest = self.get_nowait()
            except queue.Empty:
                break
            if oldest is None:  # the stop sentinel always goes through
                super().put(oldest)
                break
            self.dropped += 1
        super().put(item, block, timeout)


def bound_decoder_queue(receiver: Any, kind: str) -> None:
    """Cap the encoded frames waiting for the decoder: 2 s of video, 5 s of audio.

    Must run before the receiver starts (it hands the queue to its decoder thread).
    """
    limit = 60 if kind == "video" else 250
    receiver._RTCRtpReceiver__decoder_queue = _BoundedDecoderQueue(limit)


class _DroppingFrameQueue(asyncio.Queue[Any]):
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


def bound_frame_queue(receiver: Any, kind: str) -> None:
    """Cap decoded frames waiting for the reader: 1 s of video, 5 s of audio."""
    receiver.track._queue = _DroppingFrameQueue(30 if kind == "video" else 250)
