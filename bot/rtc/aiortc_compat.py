"""Every use of aiortc's and aioice's private API by the recorder, and nothing else.

aiortc 1.16 gives no public way to read RTCP sender reports' RTP half, to see a packet's
arrival before its jitter buffer, to keep real RTP timestamps on decoded frames, to route
packets by the MID header extension, to tell retransmissions (RTX) from media, or to ask
for a keyframe. Each hook below wraps one private method on one instance; none changes
aiortc's behaviour beyond what is described. ``accept_lower_dynamic_payload_types`` is
the one process-wide change, and it only makes aiortc answer what was offered.

Private names change between releases without notice, and assigning a renamed attribute
silently creates an unused one (aiortc's defaults come back: timestamps from 0, unbounded
queues, multi-second stalls) while everything still runs. So every read and write of a
private name goes through ``_get`` and ``_replace``, which refuse a name that does not
exist, and ``check_private_api`` finds any missing name, or an aiortc or aioice of
another minor version than the one checked, before the recorder makes a network call.
"""

from __future__ import annotations

import asyncio
import queue
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import aiortc
import aiortc.rtp
from aioice.stun import TransactionError
from aiortc import RTCPeerConnection
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import NackGenerator, RemoteStreamTrack
from aiortc.rtp import RtcpSrPacket
from aiortc.utils import uint16_add, uint16_gt

from bot.rtc.clock import StreamClock

CHECKED = {"aiortc": (aiortc.__name__, "1.16"), "aioice": (aioice.__name__, "0.13")}
"""The minor versions whose private API this module was written and tested against."""
LOWER_DYNAMIC_PAYLOAD_TYPES = range(35, 64)
"""Payload types browsers and Cloudflare use once 96-127 are taken (JSEP, RFC 8829 §5.1.1)."""
VIDEO_GIVE_UP_PACKETS = 48
"""Later video packets a lost one is waited for (retransmissions get a few round trips)."""
NACK_RETRY_SECONDS = 0.1
"""A packet still missing is asked for again after this long: aiortc asks only when a new
gap appears, so a retransmission lost too (or a lost NACK) left the picture frozen until
the jitter buffer gave up and a keyframe came."""

_RECEIVER = "_RTCRtpReceiver__"
"""Prefix of RTCRtpReceiver's name-mangled private attributes."""


class AiortcCompatError(RuntimeError):
    """The installed aiortc or aioice is not the one this module was checked against."""


def _versions() -> str:
    return f"aiortc {aiortc.__version__}, aioice {aioice.__version__}"


def _get(obj: Any, name: str) -> Any:
    """A private attribute that must exist."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise AiortcCompatError(
            f"{type(obj).__module__}.{type(obj).__qualname__} has no {name!r} "
            f"({_versions()}); bot/rtc/aiortc_compat.py must be revised for this version"
        ) from None


def _replace(obj: Any, name: str, value: Any) -> None:
    """Set a private attribute that must already exist: a renamed one would be created
    anew, unused, and aiortc would go on with its own."""
    _get(obj, name)
    setattr(obj, name, value)


_RECEIVER_NAMES = (
    "_handle_rtp_packet",
    "_handle_rtcp_packet",
    "_send_rtcp_pli",
    "_send_rtcp_nack",
    *(
        f"{_RECEIVER}{name}"
        for name in (
            "codecs",
            "rtx_ssrc",
            "nack_generator",
            "timestamp_mapper",
            "jitter_buffer",
            "decoder_queue",
        )
    ),
)
_JITTER_BUFFER_NAMES = (
    "_origin",
    "_packets",
    "capacity",
    "smart_remove",
    "remove",
    "_remove_frame",
)


async def check_private_api() -> None:
    """Fail now, naming what is missing, if the installed aiortc or aioice is not the
    minor version this module was checked against or lacks a private name it uses.

    Builds one receiving m-line on a PeerConnection that never negotiates (no network)
    and looks up every name, so a renamed one is found at start-up instead of as a
    recording that quietly falls back to aiortc's defaults.
    """
    for package, (module, minor) in CHECKED.items():
        installed = aioice.__version__ if package == "aioice" else aiortc.__version__
        if installed != minor and not installed.startswith(f"{minor}."):
            raise AiortcCompatError(
                f"{module} {installed} is installed; the recorder's use of its private API "
                f"was checked against {minor}.x only: install {package}=={minor}.* (as "
                "pyproject.toml pins it), or revise bot/rtc/aiortc_compat.py for it"
            )
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        receiver = transceiver.receiver
        _get(transceiver, "_codecs")
        for name in _RECEIVER_NAMES:
            _get(receiver, name)
        _get(RemoteStreamTrack(kind="video"), "_queue")  # what receiver.track becomes
        router = _get(receiver.transport, "_rtp_router")
        for name in ("route_rtp", "mid_table", "ssrc_table"):
            _get(router, name)
        connection = _get(receiver.transport.transport, "_connection")
        for name in ("_nominated", "build_request", "remote_password", "remote_is_lite"):
            _get(connection, name)
        buffer = JitterBuffer(capacity=16, is_video=True)
        for name in _JITTER_BUFFER_NAMES:
            _get(buffer, name)
        for name in ("max_seq", "missing"):
            _get(NackGenerator(), name)
        _get(aiortc.rtp, "DYNAMIC_PAYLOAD_TYPES")
    finally:
        await pc.close()


def accept_lower_dynamic_payload_types() -> None:
    """Let aiortc answer a codec offered on payload type 35-63 on that payload type.

    aiortc treats only 96-127 as dynamic: a codec offered as, say, H.264 on 36 is answered
    on a payload type of aiortc's own choosing that the SFU never sends, so every packet
    of that track is dropped as unknown, and its RTX with it. Idempotent.
    """
    dynamic = _get(aiortc.rtp, "DYNAMIC_PAYLOAD_TYPES")
    if 35 not in dynamic:
        merged = frozenset(dynamic) | frozenset(LOWER_DYNAMIC_PAYLOAD_TYPES)
        _replace(aiortc.rtp, "DYNAMIC_PAYLOAD_TYPES", merged)


class ReceiverTap:
    """What the recorder hears from one aiortc receiver, before aiortc's jitter buffer.

    Installed once per receiver (``tap``). An m-line outlives its track: after
    ``tracks/close`` Cloudflare may put a later track on the same m-line, so ``retarget``
    gives the tap the new track's clock and payload types and starts its buffers afresh.

    Only packets of a media payload type reach the clock, liveness and keyframe logic.
    Retransmissions (RTX, on their own SSRC) go to aiortc, which unwraps them into the
    media stream, so they land in place in the jitter buffer; when the offer had no
    ``a=ssrc-group:FID`` line the RTX SSRC is learned from the first one that arrives.
    Anything else (RED, FEC, a codec that was not negotiated) is counted and dropped.
    """

    def __init__(self, receiver: Any, kind: str) -> None:
        self._receiver = receiver
        self.kind = kind
        self.clock: StreamClock | None = None
        self._media: frozenset[int] = frozenset()
        self._rtx: frozenset[int] = frozenset()
        self._on_packet: Callable[[int], None] | None = None
        self._reorder: _AudioReorder | None = None
        self._last_nack = 0.0
        self.nack_retries = 0
        self.accepting = False
        """False for a declined m-line: every packet is dropped before parsing."""
        self.rtx_packets = 0
        self.foreign_packets = 0
        self.foreign_payload_type: int | None = None
        self._handle_rtp: Callable[..., Awaitable[None]] = _get(receiver, "_handle_rtp_packet")
        self._handle_rtcp: Callable[[Any], Awaitable[None]] = _get(receiver, "_handle_rtcp_packet")
        self._send_nack: Callable[[int, list[int]], Awaitable[None]] = _get(
            receiver, "_send_rtcp_nack"
        )
        self._codecs: dict[int, Any] = _get(receiver, f"{_RECEIVER}codecs")
        self._rtx_ssrc: dict[int, int] = _get(receiver, f"{_RECEIVER}rtx_ssrc")
        self._nack: NackGenerator | None = _get(receiver, f"{_RECEIVER}nack_generator")
        _replace(receiver, f"{_RECEIVER}timestamp_mapper", _ExtendingTimestampMapper(self))
        _replace(receiver, "_handle_rtp_packet", self._on_rtp)
        _replace(receiver, "_handle_rtcp_packet", self._on_rtcp)
        decoded = _BoundedDecoderQueue(60 if kind == "video" else 250)
        _replace(receiver, f"{_RECEIVER}decoder_queue", decoded)
        self._frames = _DroppingFrameQueue(30 if kind == "video" else 250)
        _replace(receiver.track, "_queue", self._frames)

    def retarget(
        self,
        clock: StreamClock,
        codecs: list[Any],
        on_packet: Callable[[int], None] | None = None,
    ) -> None:
        """Feed a (new) track's packets to ``clock``; ``codecs`` are the m-line's
        negotiated codecs (aiortc ``RTCRtpCodecParameters``).

        ``on_packet(ssrc)`` runs for every media packet, on the event loop, before
        aiortc's jitter buffer (used for keyframe requests and liveness). Must run before
        the receiver starts when the m-line is new: aiortc hands its queues to the decoder
        thread at start.
        """
        self.clock = clock
        self._media = frozenset(c.payloadType for c in codecs if not is_rtx(c))
        self._rtx = frozenset(c.payloadType for c in codecs if is_rtx(c))
        self._on_packet = on_packet
        self.accepting = True
        self.rtx_packets = self.foreign_packets = 0
        self.foreign_payload_type = None
        if self.kind == "audio":
            buffer: Any = _AudioPassThrough()
            self._reorder = _AudioReorder()
        else:
            buffer = _LossTolerantJitterBuffer(512, VIDEO_GIVE_UP_PACKETS)
        _replace(self._receiver, f"{_RECEIVER}jitter_buffer", buffer)
        self._codecs.update((c.payloadType, c) for c in codecs)
        while not self._frames.empty():  # frames of the m-line's previous track
            self._frames.get_nowait()

    def decline(self) -> None:
        """Drop every packet (a track in a codec the recorder cannot decode, or the
        connection closing)."""
        self.accepting = False

    async def _on_rtp(self, packet: Any, arrival_time_ms: int) -> None:
        clock = self.clock
        if not self.accepting or clock is None:
            return
        payload_type = packet.payload_type
        if payload_type in self._rtx:
            self.rtx_packets += 1
            if clock.ssrc is not None:
                self._rtx_ssrc.setdefault(packet.ssrc, clock.ssrc)
            await self._handle_rtp(packet, arrival_time_ms=arrival_time_ms)
            return
        if payload_type not in self._media:
            self.foreign_packets += 1
            self.foreign_payload_type = payload_type
            return
        clock.on_packet(packet.ssrc, packet.timestamp, time.time())
        if self._on_packet is not None:
            self._on_packet(packet.ssrc)
        if self._reorder is None:
            nack = self._nack
            newest = nack.max_seq if nack is not None else None
            await self._handle_rtp(packet, arrival_time_ms=arrival_time_ms)
            if nack is not None:
                await self._nack_again(nack, newest, packet.ssrc)
            return
        for ready in self._reorder.push(packet):
            await self._handle_rtp(ready, arrival_time_ms=arrival_time_ms)

    async def _nack_again(self, nack: NackGenerator, newest: int | None, ssrc: int) -> None:
        """Ask again for packets still missing, every ``NACK_RETRY_SECONDS``, while the
        jitter buffer still waits for them."""
        now, highest = time.monotonic(), nack.max_seq
        if highest is None:
            return
        if newest is not None and uint16_gt(highest, uint16_add(newest, 1)):
            self._last_nack = now  # a new gap: aiortc has just asked
            return
        if not nack.missing or now - self._last_nack < NACK_RETRY_SECONDS:
            return
        waiting = sorted(
            seq for seq in nack.missing if uint16_add(highest, -seq) < VIDEO_GIVE_UP_PACKETS
        )
        self._last_nack = now
        if waiting:
            self.nack_retries += 1
            await self._send_nack(ssrc, waiting)

    async def _on_rtcp(self, packet: Any) -> None:
        clock = self.clock
        if isinstance(packet, RtcpSrPacket) and clock is not None:
            clock.on_sender_report(
                packet.ssrc, packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp
            )
        await self._handle_rtcp(packet)


class _ExtendingTimestampMapper:
    """Stands in for aiortc's TimestampMapper: frames keep their extended RTP timestamp.

    aiortc's mapper rebases to 0 and turns a step back into a 13-hour jump forwards.
    """

    def __init__(self, tap: ReceiverTap) -> None:
        self._tap = tap

    def map(self, timestamp: int) -> int:
        clock = self._tap.clock
        assert clock is not None, "frames come only from packets the tap accepted"
        return clock.frame_timestamp(timestamp)


def negotiated_codecs(transceiver: Any) -> list[Any]:
    """The m-line's negotiated codecs (``RTCRtpCodecParameters``), the SFU's first first."""
    return list(_get(transceiver, "_codecs"))


_ROUTED_BY_MID: weakref.WeakSet[Any] = weakref.WeakSet()
"""Routers already patched (one per transport, shared by every m-line on it)."""


def route_by_mid(dtls_transport: Any) -> None:
    """Route RTP by the MID header extension before SSRC and payload type.

    aiortc keeps a MID table but never reads it, so with several same-kind tracks and no
    ``a=ssrc`` lines every packet is dropped. Learning the SSRC from the MID also routes
    the stream's sender reports, which aiortc routes by SSRC only.
    """
    router = _get(dtls_transport, "_rtp_router")
    if router in _ROUTED_BY_MID:
        return
    route_by_ssrc: Callable[[Any], Any] = _get(router, "route_rtp")
    mid_table: dict[str, Any] = _get(router, "mid_table")
    ssrc_table: dict[int, Any] = _get(router, "ssrc_table")

    def route(packet: Any) -> Any:
        mid = packet.extensions.mid
        if mid is not None:
            receiver = mid_table.get(mid)
            if receiver is not None:
                ssrc_table[packet.ssrc] = receiver
                return receiver
        return route_by_ssrc(packet)

    _replace(router, "route_rtp", route)
    _ROUTED_BY_MID.add(router)


def request_keyframe(receiver: Any, ssrc: int) -> asyncio.Task[None]:
    """Send a PLI for ``ssrc`` (a media SSRC, never RTX): aiortc never asks for a keyframe
    when a track starts."""
    return asyncio.ensure_future(_get(receiver, "_send_rtcp_pli")(ssrc))


async def probe_ice_path(dtls_transport: Any, answer_within: float) -> bool | None:
    """One STUN binding check on the nominated ICE pair: is the path alive right now?

    aiortc notices a dead path only when consent expires (about 30 s), and says nothing
    while media is merely absent (a publisher may be muted or gone, which Cloudflare does
    not signal). A check answered proves the path; None means there is no path to check
    (not connected yet, or already closed).
    """
    connection = _get(dtls_transport.transport, "_connection")
    pairs = list(_get(connection, "_nominated").values())
    if not pairs or connection.remote_password is None:
        return None
    pair = pairs[0]
    request = _get(connection, "build_request")(pair, nominate=False)
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
    except (TimeoutError, ConnectionError, OSError, TransactionError):
        # TransactionError: an error answer, or aioice's own give-up.
        return False
    return True


def ice_path(dtls_transport: Any) -> dict[str, object]:
    """Our ICE role, whether the SFU is ICE-lite, and the nominated pair's candidate types.

    Against an ICE-lite SFU (Cloudflare) the recorder must be the controlling agent and
    nominate; these are what ``bot selftest`` and the status report show.
    """
    connection = _get(dtls_transport.transport, "_connection")
    pair = next(iter(_get(connection, "_nominated").values()), None)
    return {
        "ice_role": "controlling" if connection.ice_controlling else "controlled",
        "remote_ice_lite": bool(connection.remote_is_lite),
        "local_candidate_type": pair.local_candidate.type if pair is not None else None,
        "remote_candidate_type": pair.remote_candidate.type if pair is not None else None,
    }


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
