"""Every use of aiortc's and aioice's private API by the recorder, and nothing else.

aiortc 1.16 gives no public way to read RTCP sender reports' RTP half, to see a packet's
arrival before its jitter buffer, to keep real RTP timestamps on decoded frames, to route
packets by the MID header extension, to tell retransmissions (RTX) from media, to ask for
a keyframe or hear a request for one, to check the ICE path now, or to handle a packet
in the callback its datagram arrives in (aiortc queues each for a task). Each hook below wraps
one private method or attribute on one instance; what to do with what it gives is decided
by its caller (``receiver_tap``, ``subscriber``). ``accept_lower_dynamic_payload_types``
and ``decode_in_one_thread`` are the two process-wide changes: aiortc answers what was
offered, and its decoders start no FFmpeg threads of their own.

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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aioice
import aiortc
import aiortc.rtcrtpreceiver
import aiortc.rtp
import av
import pylibsrtp
import structlog
from aioice.ice import StunProtocol
from aioice.stun import TransactionError
from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpreceiver import NackGenerator, RemoteStreamTrack
from aiortc.rtp import RtpPacket, is_rtcp
from aiortc.utils import uint16_add

from bot.rtc.clock import NTP_UNIX_OFFSET
from bot.rtc.datagrams import BatchedDatagramReader, Deliver

log = structlog.get_logger("bot.rtc.aiortc_compat")

CHECKED = {"aiortc": (aiortc.__name__, "1.16"), "aioice": (aioice.__name__, "0.13")}
"""The minor versions whose private API this module was written and tested against."""
LOWER_DYNAMIC_PAYLOAD_TYPES = range(35, 64)
"""Payload types browsers and Cloudflare use once 96-127 are taken (JSEP, RFC 8829 §5.1.1)."""
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

    Builds one m-line (a receiver and a sender) on a PeerConnection that never
    negotiates (no network) and looks up every name, so a renamed one is found at
    start-up instead of as a recording that quietly falls back to aiortc's defaults.
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
        _get(transceiver.sender, "_send_keyframe")
        for name in _RECEIVER_NAMES:
            _get(receiver, name)
        _get(RemoteStreamTrack(kind="video"), "_queue")  # what receiver.track becomes
        dtls = receiver.transport
        router = _get(dtls, "_rtp_router")
        for name in ("route_rtp", "mid_table", "ssrc_table"):
            _get(router, name)
        for name in ("_rx_srtp", "_state", "_rtp_header_extensions_map"):
            _get(dtls, name)
        connection = _get(dtls.transport, "_connection")
        for name in (
            "_nominated",
            "_protocols",
            "build_request",
            "remote_password",
            "remote_is_lite",
        ):
            _get(connection, name)
        for name in ("datagram_received", "connection_lost"):
            _get(StunProtocol, name)
        _require_set_by(StunProtocol, "connection_made", "transport")
        buffer = JitterBuffer(capacity=16, is_video=True)
        for name in _JITTER_BUFFER_NAMES:
            _get(buffer, name)
        for name in ("max_seq", "missing"):
            _get(NackGenerator(), name)
        _get(aiortc.rtp, "DYNAMIC_PAYLOAD_TYPES")
        _require_set_by(RTCRtpReceiver, "_handle_rtp_packet", "_data")  # AudioPassThrough
        _check_decoder_contexts()
    finally:
        await pc.close()


def _check_decoder_contexts() -> None:
    """aiortc's decoder thread makes its decoders with its module's ``get_decoder``, and
    each decoder the recorder uses keeps its FFmpeg context, unopened until the first
    decode, as ``codec``: where ``decode_in_one_thread`` sets their threads."""
    worker = _get(aiortc.rtcrtpreceiver, "decoder_worker")
    if "get_decoder" not in worker.__code__.co_names:
        raise AiortcCompatError(
            f"aiortc.rtcrtpreceiver.decoder_worker no longer calls get_decoder ({_versions()}); "
            "bot/rtc/aiortc_compat.py must be revised for this version"
        )
    _get(aiortc.rtcrtpreceiver, "get_decoder")
    for mime, rate in (
        ("audio/opus", 48000),
        ("audio/PCMU", 8000),
        ("audio/PCMA", 8000),
        ("video/VP8", 90000),
        ("video/H264", 90000),
    ):
        context = getattr(
            get_decoder(RTCRtpCodecParameters(mimeType=mime, clockRate=rate)), "codec", None
        )
        if not isinstance(context, av.CodecContext) or context.is_open:
            raise AiortcCompatError(
                f"aiortc's {mime} decoder keeps no unopened FFmpeg context as 'codec' "
                f"({_versions()}); bot/rtc/aiortc_compat.py must be revised for this version"
            )


def _require_set_by(cls: type, method: str, name: str) -> None:
    """``name`` is an attribute that ``cls.method`` sets on each packet, so there is no
    object to look it up on before a packet arrives: look for it in the method's code."""
    if name not in _get(cls, method).__code__.co_names:
        raise AiortcCompatError(
            f"{cls.__module__}.{cls.__qualname__}.{method} no longer sets {name!r} "
            f"({_versions()}); bot/rtc/aiortc_compat.py must be revised for this version"
        )


def decode_in_one_thread() -> None:
    """Have aiortc's decoders decode on their decoder thread alone, with no FFmpeg
    threads of their own. Idempotent.

    PyAV opens every decoder with FFmpeg's threads: on two cores an H.264 decoder starts
    two slice threads and a VP8 decoder a libvpx thread. A recorder wants the least CPU,
    not the least latency per picture: without them a one-slice picture costs the same,
    and an H.264 picture in four slices (a sender in packetization mode 0 fits each
    slice in a packet) 0.67-0.75x (``bench.decoder_threads``). It also keeps FFmpeg's
    thread pools out of the decoder thread, which aiortc joins on the event loop when a
    recording stops (a guard: no hang was traced to them).
    """
    _replace(aiortc.rtcrtpreceiver, "get_decoder", _decoder_in_one_thread)


def _decoder_in_one_thread(codec: RTCRtpCodecParameters) -> Any:
    """aiortc's decoder for ``codec``, its FFmpeg context set to start no threads."""
    decoder = get_decoder(codec)
    _get(decoder, "codec").thread_count = 1  # before the first decode opens it
    return decoder


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


class ReceiverHooks:
    """One aiortc receiver's private parts, looked up and replaced once, for ``ReceiverTap``.

    aiortc gives every RTP and RTCP packet to the receiver's ``_handle_rtp_packet`` and
    ``_handle_rtcp_packet``: ``on_rtp`` and ``on_rtcp`` take their place, and
    ``handle_rtp`` / ``handle_rtcp`` are aiortc's own, for the packets passed on. The
    timestamp mapper and both frame queues are replaced for the receiver's life (aiortc
    hands the queues to its decoder thread when the receiver starts).
    """

    def __init__(
        self,
        receiver: Any,
        *,
        on_rtp: Callable[[Any, int], Awaitable[None]],
        on_rtcp: Callable[[Any], Awaitable[None]],
        frame_timestamp: Callable[[int], int],
        decoder_queue: queue.Queue[Any],
        frame_queue: asyncio.Queue[Any],
    ) -> None:
        self._receiver = receiver
        self.handle_rtp: Callable[..., Awaitable[None]] = _get(receiver, "_handle_rtp_packet")
        self.handle_rtcp: Callable[[Any], Awaitable[None]] = _get(receiver, "_handle_rtcp_packet")
        self.send_nack: Callable[[int, list[int]], Awaitable[None]] = _get(
            receiver, "_send_rtcp_nack"
        )
        self._codecs: dict[int, Any] = _get(receiver, f"{_RECEIVER}codecs")
        self._rtx_ssrc: dict[int, int] = _get(receiver, f"{_RECEIVER}rtx_ssrc")
        self._nack: NackGenerator | None = _get(receiver, f"{_RECEIVER}nack_generator")
        mapper = _TimestampMapper(frame_timestamp)
        _replace(receiver, f"{_RECEIVER}timestamp_mapper", mapper)
        _replace(receiver, "_handle_rtp_packet", on_rtp)
        _replace(receiver, "_handle_rtcp_packet", on_rtcp)
        _replace(receiver, f"{_RECEIVER}decoder_queue", decoder_queue)
        _replace(receiver.track, "_queue", frame_queue)

    def use_jitter_buffer(self, buffer: Any) -> None:
        """Put ``buffer`` (aiortc's ``JitterBuffer`` interface) in place of the current one."""
        _replace(self._receiver, f"{_RECEIVER}jitter_buffer", buffer)

    def add_codecs(self, codecs: list[Any]) -> None:
        """Let aiortc decode these payload types (``RTCRtpCodecParameters``): a reused
        m-line's new track may come with payload types of its own."""
        self._codecs.update((c.payloadType, c) for c in codecs)

    def learn_rtx_ssrc(self, rtx_ssrc: int, media_ssrc: int) -> None:
        """Unwrap retransmissions on ``rtx_ssrc`` into ``media_ssrc`` (the first pairing
        stays): without ``a=ssrc-group:FID`` aiortc drops them."""
        self._rtx_ssrc.setdefault(rtx_ssrc, media_ssrc)

    def newest_seq(self) -> int | None:
        """The highest sequence number aiortc's NACK generator has seen; None before the
        first packet, and always for audio (aiortc sends NACKs for video only)."""
        return self._nack.max_seq if self._nack is not None else None

    def missing_seqs(self) -> set[int]:
        """The sequence numbers aiortc's NACK generator still waits for."""
        return self._nack.missing if self._nack is not None else set()


class _TimestampMapper:
    """Stands in for aiortc's TimestampMapper, which aiortc asks for each decoded frame's
    timestamp."""

    def __init__(self, frame_timestamp: Callable[[int], int]) -> None:
        self.map = frame_timestamp


class AudioPassThrough:
    """Every audio packet is a whole frame (Opus, G.711): hand it on at once.

    aiortc's audio jitter buffer holds four frames back and, when a packet is lost for
    good, stalls until 16 later packets have arrived (320 ms of silence per loss). Packets
    reach this one already in order (``bot.rtc.buffers.AudioReorder``); jitter is absorbed
    downstream, where frames are placed by timestamp.
    """

    capacity = 16

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


class LossTolerantJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, but a lost packet is given up after ``give_up_after``
    later packets instead of after the whole capacity (512 packets: seconds of frozen
    picture per unrecovered loss), with a keyframe request.
    """

    def __init__(self, capacity: int, give_up_after: int) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=True)
        self._give_up_after = give_up_after
        self.losses = 0
        """Times packets were given up (a keyframe asked for): the frames after each
        refer to what was lost, until the keyframe."""

    def add(self, packet: Any) -> tuple[bool, Any]:
        pli, frame = super().add(packet)
        origin = self._origin
        if frame is not None or origin is None:
            self.losses += pli
            return pli, frame
        behind = uint16_add(packet.sequence_number, -origin)
        if behind < self._give_up_after or behind >= self.capacity:
            self.losses += pli
            return pli, frame
        if self.smart_remove(behind - self._give_up_after + 1):
            self._origin = packet.sequence_number
        self._drop_partial_frame()
        self.losses += 1
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


_ON_ARRIVAL: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
"""ICE protocols whose SRTP packets are already handled on arrival: read in batches?"""


def handle_rtp_on_arrival(dtls_transport: Any, batch_seconds: float = 0.0) -> bool:
    """Handle each SRTP media packet in the callback its datagram arrives in; with
    ``batch_seconds``, read the ICE socket that often instead of on every packet
    (``bot.rtc.datagrams``). True when reading in batches (asyncio's own loop; uvloop's
    UDP transports cannot pause reading).

    On aiortc's own way a packet is tried as STUN by aioice, put on a queue, and taken
    off it by aiortc's DTLS task, which wakes and awaits three coroutines deep for it
    before it unprotects it: the receive path costs about a quarter more CPU per packet
    that way (``bench.receive_path``: 23 against 18 us). Here an SRTP packet (first byte
    128-191, not RTCP) of a connected transport is unprotected, parsed and routed as it
    arrives, and its receiver's handler is run to its end at once; what it may send (a
    NACK, a PLI, a bitrate estimate) is a UDP send that does not wait. STUN, DTLS and
    SRTCP still go aiortc's way. Call once connected (ICE has its protocols); idempotent.

    Not counted, as aiortc would: the DTLS transport's own received packets and bytes
    (``getStats`` "transport"); the receivers' statistics are kept as before.
    """
    dtls = dtls_transport
    router = _get(dtls, "_rtp_router")
    extensions = _get(dtls, "_rtp_header_extensions_map")
    for name in ("_rx_srtp", "_state"):  # read for every packet below, so checked here
        _get(dtls, name)
    connection = _get(dtls.transport, "_connection")
    batched = False
    for protocol in _get(connection, "_protocols"):
        if protocol in _ON_ARRIVAL:
            batched = batched or _ON_ARRIVAL[protocol]
            continue
        aioice_way: Callable[[bytes, tuple[Any, ...]], None] = _get(protocol, "datagram_received")

        def handle(
            data: bytes, addr: tuple[Any, ...], arrival: float, aioice_way: Any = aioice_way
        ) -> None:
            if not data:
                return  # nothing to handle (aiortc's receive task would fail on it)
            srtp = dtls._rx_srtp
            if (
                srtp is None
                or dtls._state is not DtlsState.CONNECTED
                or not 127 < data[0] < 192
                or is_rtcp(data)
            ):
                aioice_way(data, addr)
                return
            try:
                packet = RtpPacket.parse(srtp.unprotect(data), extensions)
            except (pylibsrtp.Error, ValueError):
                return  # as aiortc: a packet that does not authenticate or parse is dropped
            receiver = router.route_rtp(packet)
            if receiver is not None:
                arrival_ms = int((arrival + NTP_UNIX_OFFSET) * 1000)  # aiortc's: from 1900
                run_now(receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_ms))

        def received(data: bytes, addr: tuple[Any, ...], handle: Any = handle) -> None:
            handle(data, addr, time.time())

        _replace(protocol, "datagram_received", received)
        in_batches = batch_seconds > 0 and _read_in_batches(protocol, handle, batch_seconds)
        _ON_ARRIVAL[protocol] = in_batches
        batched = batched or in_batches
    return batched


def _read_in_batches(protocol: Any, handle: Deliver, interval: float) -> bool:
    """Stop the protocol's transport reading and read its socket in batches instead,
    until the transport is closed. False if the transport cannot pause (uvloop)."""
    transport = _get(protocol, "transport")
    if not hasattr(transport, "pause_reading"):
        return False
    transport.pause_reading()
    reader = BatchedDatagramReader(transport.get_extra_info("socket").fileno(), handle, interval)
    aioice_lost: Callable[[Exception | None], None] = _get(protocol, "connection_lost")

    def lost(exc: Exception | None) -> None:
        try:
            reader.close()
        finally:  # aioice's close waits for this: it must always be told
            aioice_lost(exc)

    _replace(protocol, "connection_lost", lost)
    return True


def run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` here until it ends or first waits; if it waits, a task carries
    it on from there. An error is logged, never raised: one bad packet must not end the
    datagram callback it came in (aiortc's receive task would end the transport)."""
    ended, waiting = _step(coroutine)
    if not ended:
        task = asyncio.ensure_future(_carry_on(coroutine, waiting))
        _CARRIED_ON.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_CARRIED_ON.discard)


_CARRIED_ON: set[asyncio.Future[None]] = set()


async def _carry_on(coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Go on with a coroutine that ``run_now`` started and that waits for ``waiting``
    (a future, or None for a bare yield), as a task would."""
    ended = False
    while not ended:
        await (asyncio.sleep(0) if waiting is None else asyncio.wait([waiting]))
        ended, waiting = _step(coroutine)


def _step(coroutine: Coroutine[Any, Any, None]) -> tuple[bool, Any]:
    """Resume ``coroutine`` once: whether it ended (an error is logged), else what it
    waits for."""
    try:
        return False, coroutine.send(None)
    except StopIteration:
        return True, None
    except Exception as exc:
        log.error("rtc.rtp_handler_failed", error=f"{type(exc).__name__}: {exc}")
        return True, None


def request_keyframe(receiver: Any, ssrc: int) -> asyncio.Task[None]:
    """Send a PLI for ``ssrc`` (a media SSRC, never RTX): aiortc never asks for a keyframe
    when a track starts."""
    return asyncio.ensure_future(_get(receiver, "_send_rtcp_pli")(ssrc))


def on_keyframe_request(sender: Any, callback: Callable[[], None]) -> None:
    """Run ``callback`` when the remote side asks ``sender`` for a keyframe (PLI or FIR).

    aiortc passes the request only to an encoder of its own; a sender given frames that
    are already encoded (the synthetic participant) must hear it itself.
    """
    _replace(sender, "_send_keyframe", callback)


def ice_check(dtls_transport: Any) -> Coroutine[Any, Any, None] | None:
    """One STUN binding check on the nominated ICE pair, to be awaited; None when there is
    no pair to check (not connected yet, or already closed).

    aioice has no public way to send one. It is sent once, without retransmissions, so
    the caller's deadline decides; it raises ``ConnectionError`` when answered with an
    error or given up by aioice, ``OSError`` when it cannot be sent.
    """
    connection = _get(dtls_transport.transport, "_connection")
    pairs = list(_get(connection, "_nominated").values())
    if not pairs or connection.remote_password is None:
        return None
    pair = pairs[0]
    request = _get(connection, "build_request")(pair, nominate=False)
    return _answered(
        pair.protocol.request(
            request,
            pair.remote_addr,
            integrity_key=connection.remote_password.encode("utf8"),
            retransmissions=0,
        )
    )


async def _answered(transaction: Awaitable[Any]) -> None:
    try:
        await transaction
    except TransactionError as exc:  # an error answer, or aioice's own give-up
        raise ConnectionError(f"ICE check failed: {exc}") from exc


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
