"""RTP/RTCP forwarding from one published track to its subscribers, without transcoding.

A ``PublishedTrack`` receives a publisher's packets (never decoded), asks the publisher
for retransmissions (NACK) and keyframes (PLI, debounced), and hands every packet to its
``Subscription`` objects. A subscription rewrites what identifies the stream on the
subscriber's side (SSRC, payload type, sequence numbers, header extensions) and keeps the
RTP timestamps as the publisher sent them, so the publisher's sender reports stay valid
when relayed with the same NTP/RTP pair.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
    unwrap_rtx,
)
from aiortc.utils import uint16_gt

from bot.testbed.sfu import aiortc_hooks
from bot.testbed.sfu.faults import Impairment

log = structlog.get_logger("bot.sfu")

HISTORY_PACKETS = 512
"""Packets kept per subscriber to answer its NACKs (about 1-2 s of 720p video)."""
PLI_DEBOUNCE_S = 0.3
"""At most one keyframe request upstream per interval, however many subscribers ask."""


class PublishedTrack:
    """One m-line a session sends on: the source its subscribers are fed from.

    ``name`` is None until the client publishes the m-line under a track name; an
    unnamed inlet still swallows its packets, so aiortc never decodes them.
    """

    def __init__(
        self,
        *,
        session_id: str,
        name: str | None,
        mid: str,
        kind: str,
        codecs: list[RTCRtpCodecParameters],
        receiver: RTCRtpReceiver,
        sender_reports: bool,
    ) -> None:
        primary = next((c for c in codecs if not is_rtx(c)), None)
        if primary is None or primary.payloadType is None:
            raise ValueError(f"no media codec negotiated on mid {mid}")
        self.session_id = session_id
        self.name = name
        self.mid = mid
        self.kind = kind
        self.codec = primary
        self._payload_type: int = primary.payloadType
        self.published_at = time.monotonic()
        self.last_packet_at: float | None = None
        self.closed = False
        self.forwarding = True
        """False once a fault stops the track's packets (its publisher "left")."""
        self.subscribers: set[Subscription] = set()
        self._rtx_payload_types = {
            c.payloadType
            for c in codecs
            if is_rtx(c) and c.parameters.get("apt") == primary.payloadType
        }
        self._receiver = receiver
        self._sender_reports = sender_reports
        self._media_ssrc: int | None = None
        self._nack = NackGenerator() if kind == "video" else None
        self._last_pli = 0.0
        aiortc_hooks.forward_instead_of_decoding(receiver, self._on_rtp, self._on_sender_report)

    def idle_for(self, now: float) -> float:
        """Seconds since the last packet (or since publishing, if none came yet)."""
        return now - (self.last_packet_at or self.published_at)

    def close(self) -> None:
        """Stop feeding subscribers; like Cloudflare, they are not told (packets stop)."""
        self.closed = True
        self.subscribers.clear()

    async def request_keyframe(self) -> None:
        now = time.monotonic()
        if (
            self.kind != "video"
            or self.closed
            or self._media_ssrc is None
            or now - self._last_pli < PLI_DEBOUNCE_S
        ):
            return
        self._last_pli = now
        await aiortc_hooks.send_pli(self._receiver, self._media_ssrc)

    async def _on_rtp(self, packet: RtpPacket) -> None:
        if self.closed or not self.forwarding:
            return
        if packet.payload_type in self._rtx_payload_types:
            if self._media_ssrc is None or len(packet.payload) < 2:
                return
            packet = unwrap_rtx(packet, payload_type=self._payload_type, ssrc=self._media_ssrc)
        elif packet.payload_type != self._payload_type:
            # Only the primary codec is forwarded: subscribers negotiated exactly that one.
            return
        else:
            self._media_ssrc = packet.ssrc
        self.last_packet_at = time.monotonic()
        if self._nack is not None and self._nack.add(packet):
            await aiortc_hooks.send_nack(self._receiver, packet.ssrc, sorted(self._nack.missing))
        for subscription in list(self.subscribers):
            await subscription.forward(packet)

    async def _on_sender_report(self, report: RtcpSrPacket) -> None:
        if (
            not self._sender_reports
            or self.closed
            or not self.forwarding
            or report.ssrc != self._media_ssrc
        ):
            return
        info = report.sender_info
        for subscription in list(self.subscribers):
            await subscription.send_sender_report(info.ntp_timestamp, info.rtp_timestamp)


class Subscription:
    """One pulled track on a subscriber's session: an outlet for a ``PublishedTrack``."""

    def __init__(
        self,
        sender: RTCRtpSender,
        source: PublishedTrack,
        downlink: Callable[[], Impairment | None] = lambda: None,
    ) -> None:
        self.source = source
        self.closed = False
        self._downlink = downlink
        self._random = random.Random()
        self._held: set[asyncio.Task[None]] = set()
        self.preferred_rid: str | None = None
        self._sender = sender
        self._ssrc = aiortc_hooks.sender_ssrc(sender)
        self._payload_type: int | None = None
        self._mid: str | None = None
        self._extensions = HeaderExtensionsMap()
        self._next_seq = random.randrange(0, 32768)
        self._seq_offset: int | None = None
        self._history: OrderedDict[int, bytes] = OrderedDict()
        self._packets = 0
        self._octets = 0
        aiortc_hooks.take_over_sender(sender, self._on_start, self._on_rtcp)
        source.subscribers.add(self)

    def rebind(self, source: PublishedTrack) -> None:
        """Feed this outlet from another track; sequence numbers continue where they were."""
        self.source.subscribers.discard(self)
        self.source = source
        self._seq_offset = None
        if not self.closed:
            source.subscribers.add(self)

    def close(self) -> None:
        self.closed = True
        self.source.subscribers.discard(self)

    async def forward(self, packet: RtpPacket) -> None:
        if self.closed or self._payload_type is None:
            return
        if self._seq_offset is None:
            self._seq_offset = (self._next_seq - packet.sequence_number) & 0xFFFF
            # A new subscriber (or a new source) needs a keyframe to start decoding.
            await self.source.request_keyframe()
        seq = (packet.sequence_number + self._seq_offset) & 0xFFFF
        impairment = self._downlink()
        payload = packet.payload
        if impairment is not None:
            payload = impairment.mangle(payload, self._random)
        out = RtpPacket(
            payload_type=self._payload_type,
            marker=packet.marker,
            sequence_number=seq,
            timestamp=packet.timestamp,
            ssrc=self._ssrc,
            payload=payload,
        )
        out.padding_size = packet.padding_size
        out.extensions.mid = self._mid
        out.extensions.abs_send_time = packet.extensions.abs_send_time
        out.extensions.audio_level = packet.extensions.audio_level
        data = out.serialize(self._extensions)
        if seq == self._next_seq or uint16_gt(seq, self._next_seq):
            self._next_seq = (seq + 1) & 0xFFFF
        if seq not in self._history:
            self._packets += 1
            self._octets += len(packet.payload)
        self._history[seq] = data
        while len(self._history) > HISTORY_PACKETS:
            self._history.popitem(last=False)
        await self._send(data)

    async def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """Relay the publisher's NTP/RTP pair with this stream's SSRC and counters."""
        if self.closed or self._payload_type is None or self._packets == 0:
            return
        report = RtcpSrPacket(
            ssrc=self._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp_timestamp,
                rtp_timestamp=rtp_timestamp,
                packet_count=self._packets & 0xFFFFFFFF,
                octet_count=self._octets & 0xFFFFFFFF,
            ),
        )
        await self._send(bytes(report))

    def _on_start(self, parameters: RTCRtpSendParameters) -> None:
        self._payload_type = parameters.codecs[0].payloadType
        self._mid = parameters.muxId
        self._extensions.configure(parameters)
        log.debug("sfu.subscription_started", mid=self._mid, kind=self.source.kind)

    async def _on_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                data = self._history.get(seq)
                if data is not None:
                    await self._send(data)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            await self.source.request_keyframe()

    async def _send(self, data: bytes) -> None:
        impairment = self._downlink()
        hold = impairment.hold(self._random) if impairment is not None else 0.0
        if hold > 0:
            asyncio.get_running_loop().call_later(hold, self._send_held, data)
            return
        await self._transmit(data)

    def _send_held(self, data: bytes) -> None:
        task = asyncio.ensure_future(self._transmit(data))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _transmit(self, data: bytes) -> None:
        try:
            await aiortc_hooks.send_datagram(self._sender, data)
        except ConnectionError:
            # Not connected yet, or gone: like a real SFU, drop rather than queue.
            return
