"""RTP/RTCP forwarding from one published track to its subscribers, without transcoding.

A ``PublishedTrack`` receives a publisher's packets (never decoded), asks the publisher
for retransmissions (NACK) and keyframes (PLI, debounced), and hands every packet to its
``Subscription`` objects. A subscription rewrites what identifies the stream on the
subscriber's side (SSRC, payload type, sequence numbers, header extensions) and keeps the
RTP timestamps as the publisher sent them, so the publisher's sender reports stay valid
when relayed with the same NTP/RTP pair. A simulcast track has one stream per layer; a
subscription forwards one of them and, when it switches, shifts the new layer's
timestamps (and its relayed reports alike) to continue the stream (``simulcast``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

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
    wrap_rtx,
)
from aiortc.utils import uint16_gt

from testbed.sfu import aiortc_hooks, simulcast
from testbed.sfu.faults import Impairment

log = structlog.get_logger("bot.sfu")

HISTORY_PACKETS = 512
"""Packets kept per subscriber to answer its NACKs (about 1-2 s of 720p video)."""
PLI_DEBOUNCE_S = 0.3
"""At most one keyframe request upstream per interval, however many subscribers ask."""
SIMULCAST_REMB_BPS = 4_000_000
"""What a simulcast publisher is told it may send (REMB, every ``REMB_INTERVAL_S``).
Chrome starts at 300 kbit/s and enables layers from the smallest up as its estimate
allows; the SFU estimates nothing, so without this a full-size layer of 540p or more
never starts. Cloudflare estimates the uplink (transport-cc); a fixed ceiling that
takes every layer is assumed here, for a loopback uplink."""
REMB_INTERVAL_S = 1.0


class Layer:
    """One simulcast layer of a published track, or its only stream (rid ``""``)."""

    def __init__(self, rid: str, kind: str) -> None:
        self.rid = rid
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.last_packet_at: float | None = None
        self.width: int | None = None
        self.height: int | None = None
        """The picture size of its last keyframe, where the codec tells it (VP8)."""
        self.sender_report: tuple[int, int] | None = None
        """The publisher's last (NTP, RTP) pair for this layer."""
        self.nack = NackGenerator() if kind == "video" else None
        self.last_pli = 0.0

    def fresh(self, packet: RtpPacket) -> bool:
        """Newer than every packet seen on this layer (not a retransmission or a late
        one), so a keyframe it starts is a place to cut over to this layer."""
        newest = self.nack.max_seq if self.nack is not None else None
        return newest is None or uint16_gt(packet.sequence_number, newest)


class PublishedTrack:
    """One m-line a session sends on: the source its subscribers are fed from.

    ``name`` is None until the client publishes the m-line under a track name; an
    unnamed inlet still swallows its packets, so aiortc never decodes them. ``rids``: the
    simulcast layers the publisher offered (empty: one stream). Each layer's SSRC (and
    RTX SSRC) is learned from the rid header extensions of its first packets, since
    Chrome's simulcast offer has no ``a=ssrc`` lines.
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
        rids: Sequence[str] = (),
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
        self.rids = tuple(rids)
        self.layers = {rid: Layer(rid, kind) for rid in self.rids or ("",)}
        self._media_ssrcs: dict[int, Layer] = {}
        self._rtx_ssrcs: dict[int, Layer] = {}
        self._finds_keyframes = kind == "video" and simulcast.finds_keyframes(primary.mimeType)
        self._rtx_payload_types = {
            c.payloadType
            for c in codecs
            if is_rtx(c) and c.parameters.get("apt") == primary.payloadType
        }
        self._receiver = receiver
        self._sender_reports = sender_reports
        self._last_remb = 0.0
        aiortc_hooks.forward_instead_of_decoding(receiver, self._on_rtp, self._on_sender_report)

    def idle_for(self, now: float) -> float:
        """Seconds since the last packet (or since publishing, if none came yet)."""
        return now - (self.last_packet_at or self.published_at)

    def close(self) -> None:
        """Stop feeding subscribers; like Cloudflare, they are not told (packets stop)."""
        self.closed = True
        self.subscribers.clear()

    def select_layer(
        self, preference: simulcast.LayerPreference, current: str | None, now: float
    ) -> str | None:
        """The layer a subscription with this preference should get now."""
        if not self.rids:
            return ""
        available = {
            rid
            for rid, layer in self.layers.items()
            if layer.last_packet_at is not None
            and now - layer.last_packet_at < simulcast.LAYER_STALE_S
        }
        return simulcast.choose_layer(self._ranked(available), available, preference, current)

    def _ranked(self, available: set[str]) -> list[str]:
        """Layers best first: by picture size once every available layer has shown one,
        else in the publisher's order (Chrome's: its ``sendEncodings``, full size first
        in Orange Meets)."""
        sizes = {
            rid: (layer.width or 0) * (layer.height or 0) for rid, layer in self.layers.items()
        }
        if available and all(sizes[rid] for rid in available):
            return sorted(self.rids, key=lambda rid: -sizes[rid])
        return list(self.rids)

    def align(self, old: str, new: str) -> int | None:
        """RTP time of layer ``old`` minus that of ``new`` at one instant, from their
        sender reports (None until both have sent one)."""
        old_report = self.layers[old].sender_report if old in self.layers else None
        new_report = self.layers[new].sender_report if new in self.layers else None
        if old_report is None or new_report is None:
            return None
        (old_ntp, old_rtp), (new_ntp, new_rtp) = old_report, new_report
        ticks = round((old_ntp - new_ntp) * self.codec.clockRate / 2**32)
        return (old_rtp - new_rtp - ticks) & 0xFFFFFFFF

    async def request_keyframe(self, rid: str) -> None:
        """A PLI on the layer's own SSRC, at most one per layer per debounce interval."""
        layer = self.layers.get(rid)
        now = time.monotonic()
        if (
            self.kind != "video"
            or self.closed
            or layer is None
            or layer.ssrc is None
            or now - layer.last_pli < PLI_DEBOUNCE_S
        ):
            return
        layer.last_pli = now
        await aiortc_hooks.send_pli(self._receiver, layer.ssrc)

    async def _on_rtp(self, packet: RtpPacket) -> None:
        if self.closed or not self.forwarding:
            return
        found = self._layer_packet(packet)
        if found is None:
            return
        layer, packet = found
        now = time.monotonic()
        self.last_packet_at = layer.last_packet_at = now
        if self.rids and now - self._last_remb >= REMB_INTERVAL_S:
            self._last_remb = now
            ssrcs = [known.ssrc for known in self.layers.values() if known.ssrc is not None]
            await aiortc_hooks.send_remb(self._receiver, SIMULCAST_REMB_BPS, ssrcs)
        keyframe = self._starts_keyframe(layer, packet)
        if layer.nack is not None and layer.nack.add(packet):
            await aiortc_hooks.send_nack(self._receiver, packet.ssrc, sorted(layer.nack.missing))
        for subscription in list(self.subscribers):
            await subscription.forward(packet, layer.rid, keyframe)

    def _layer_packet(self, packet: RtpPacket) -> tuple[Layer, RtpPacket] | None:
        """The layer a packet belongs to, and the media packet (RTX unwrapped)."""
        if packet.payload_type in self._rtx_payload_types:
            layer = self._layer_by_ssrc(
                packet.ssrc, packet.extensions.repaired_rtp_stream_id, rtx=True
            )
            if layer is None or layer.ssrc is None or len(packet.payload) < 2:
                return None
            return layer, unwrap_rtx(packet, payload_type=self._payload_type, ssrc=layer.ssrc)
        if packet.payload_type != self._payload_type:
            # Only the primary codec is forwarded: subscribers negotiated exactly that one.
            return None
        layer = self._layer_by_ssrc(packet.ssrc, packet.extensions.rtp_stream_id, rtx=False)
        return None if layer is None else (layer, packet)

    def _layer_by_ssrc(self, ssrc: int, rid: str | None, *, rtx: bool) -> Layer | None:
        """Without simulcast, the one stream (its SSRC may change). With it, the layer
        learned for this SSRC, or the one its rid names (None: not told yet)."""
        if not self.rids:
            stream = self.layers[""]
            if not rtx:
                stream.ssrc = ssrc
            return stream
        table = self._rtx_ssrcs if rtx else self._media_ssrcs
        layer = table.get(ssrc)
        if layer is None and rid in self.layers:
            layer = self.layers[rid]
            replaced = layer.rtx_ssrc if rtx else layer.ssrc
            if replaced is not None:
                table.pop(replaced, None)
            table[ssrc] = layer
            if rtx:
                layer.rtx_ssrc = ssrc
            else:
                layer.ssrc = ssrc
            log.info("sfu.simulcast_layer", mid=self.mid, rid=rid, ssrc=ssrc, rtx=rtx)
        return layer

    def _starts_keyframe(self, layer: Layer, packet: RtpPacket) -> bool:
        """Whether a subscription may start this layer here (always, for audio and for
        video codecs whose keyframes the SFU cannot tell)."""
        if not self._finds_keyframes:
            return True
        if not layer.fresh(packet):
            return False
        keyframe = simulcast.keyframe_start(self.codec.mimeType, packet.payload)
        if keyframe is None:
            return False
        if keyframe.width and keyframe.height:
            layer.width, layer.height = keyframe.width, keyframe.height
        return True

    async def _on_sender_report(self, report: RtcpSrPacket) -> None:
        if self.closed or not self.forwarding:
            return
        layer = self._media_ssrcs.get(report.ssrc) if self.rids else self.layers[""]
        if layer is None or report.ssrc != layer.ssrc:
            return
        info = report.sender_info
        layer.sender_report = (info.ntp_timestamp, info.rtp_timestamp)
        if not self._sender_reports:
            return
        for subscription in list(self.subscribers):
            await subscription.send_sender_report(info.ntp_timestamp, info.rtp_timestamp, layer.rid)


class Subscription:
    """One pulled track on a subscriber's session: an outlet for a ``PublishedTrack``.

    It sends nothing until ``use_payload_types`` says which payload type the subscriber's
    answer chose for the forwarded codec (None: declined, nothing is ever sent).
    """

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
        self.simulcast = simulcast.LayerPreference()
        """Which layer of a simulcast source this subscriber wants (``tracks/new`` and
        ``tracks/update``); ignored for a source without simulcast."""
        self._sender = sender
        self._ssrc = aiortc_hooks.sender_ssrc(sender)
        self._rtx_ssrc = aiortc_hooks.sender_rtx_ssrc(sender)
        self._payload_type: int | None = None
        self._rtx_payload_type: int | None = None
        self._answered = False
        self._rtx_seq = random.randrange(0, 32768)
        """RTX packets count their own sequence numbers (RFC 4588 §4)."""
        self._mid: str | None = None
        self._extensions = HeaderExtensionsMap()
        self._splicer = simulcast.Splicer(source.codec.clockRate, random.randrange(0, 32768))
        self._history: OrderedDict[int, RtpPacket] = OrderedDict()
        self._packets = 0
        self._octets = 0
        aiortc_hooks.take_over_sender(sender, self._on_start, self._on_rtcp)
        source.subscribers.add(self)

    def rebind(self, source: PublishedTrack) -> None:
        """Feed this outlet from another track; sequence numbers and timestamps continue
        where they were, from the new track's next keyframe."""
        self.source.subscribers.discard(self)
        self.source = source
        self._splicer.restart()
        if not self.closed:
            source.subscribers.add(self)

    def reopen(self, source: PublishedTrack) -> None:
        """Reuse this closed outlet's m-line for another track (same mid, same SSRCs).

        Nothing is sent until the subscriber answers the offer that reuses it.
        """
        self.closed = False
        self._payload_type = self._rtx_payload_type = None
        self._answered = False
        self.rebind(source)

    def close(self) -> None:
        self.closed = True
        self.source.subscribers.discard(self)

    def use_payload_types(self, payload_type: int | None, rtx_payload_type: int | None) -> None:
        """What the subscriber's answer chose for the forwarded codec and its RTX."""
        self._payload_type = payload_type
        self._rtx_payload_type = rtx_payload_type if payload_type is not None else None
        self._answered = True

    @property
    def declined(self) -> bool:
        """The subscriber's answer refused the m-line or its codec: nothing is sent."""
        return self._answered and self._payload_type is None

    @property
    def forwarding(self) -> bool:
        """A packet has been sent on the payload type the subscriber accepted."""
        return not self.closed and self._payload_type is not None and self._packets > 0

    async def forward(self, packet: RtpPacket, rid: str = "", keyframe: bool = True) -> None:
        """Send one packet of layer ``rid`` if it is part of what this subscriber gets
        (``keyframe``: the packet starts one, so the stream may start or switch here)."""
        if self.closed or self._payload_type is None:
            return
        now = time.monotonic()
        splicer = self._splicer
        splicer.want(self.source.select_layer(self.simulcast, splicer.current, now))
        if splicer.switching and splicer.target is not None:
            # A new subscriber, a new source or a new layer needs a keyframe to start.
            await self.source.request_keyframe(splicer.target)
        for original, seq, timestamp in splicer.push(packet, rid, keyframe, now, self.source.align):
            await self._send_media(original, seq, timestamp)

    async def _send_media(self, packet: RtpPacket, seq: int, timestamp: int) -> None:
        payload_type = self._payload_type
        if payload_type is None or self._mid is None:
            # Not (or no longer) accepted by the subscriber's answer, or the sender has
            # not started: its header extensions (the MID above all) are not known yet.
            return
        impairment = self._downlink()
        payload = packet.payload
        if impairment is not None:
            payload = impairment.mangle(payload, self._random)
        out = RtpPacket(
            payload_type=payload_type,
            marker=packet.marker,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=self._ssrc,
            payload=payload,
        )
        out.padding_size = packet.padding_size
        out.extensions.mid = self._mid
        out.extensions.abs_send_time = packet.extensions.abs_send_time
        out.extensions.audio_level = packet.extensions.audio_level
        data = out.serialize(self._extensions)
        if seq not in self._history:
            self._packets += 1
            self._octets += len(packet.payload)
        self._history[seq] = out
        while len(self._history) > HISTORY_PACKETS:
            self._history.popitem(last=False)
        await self._send(data)

    async def send_sender_report(
        self, ntp_timestamp: int, rtp_timestamp: int, rid: str = ""
    ) -> None:
        """Relay the publisher's NTP/RTP pair for layer ``rid`` with this stream's SSRC
        and counters, if that layer is the one forwarded (its RTP time shifted as its
        packets are)."""
        rtp_timestamp_out = self._splicer.rtp_timestamp(rid, rtp_timestamp)
        if (
            self.closed
            or self._payload_type is None
            or self._packets == 0
            or rtp_timestamp_out is None
        ):
            return
        report = RtcpSrPacket(
            ssrc=self._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp_timestamp,
                rtp_timestamp=rtp_timestamp_out,
                packet_count=self._packets & 0xFFFFFFFF,
                octet_count=self._octets & 0xFFFFFFFF,
            ),
        )
        await self._send(bytes(report))

    def _on_start(self, parameters: RTCRtpSendParameters) -> None:
        # The payload types come from the subscriber's answer (``use_payload_types``):
        # aiortc's parameters hold the formats of its own offer, not the SFU's.
        self._mid = parameters.muxId
        self._extensions.configure(parameters)
        log.debug("sfu.subscription_started", mid=self._mid, kind=self.source.kind)

    async def _on_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                original = self._history.get(seq)
                if original is not None:
                    await self._send(self._retransmission(original))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            layer = self._splicer.current
            await self.source.request_keyframe(layer if layer is not None else "")

    def _retransmission(self, original: RtpPacket) -> bytes:
        """A NACKed packet, over RTX on this outlet's RTX SSRC when the subscriber
        negotiated RTX (observed on Cloudflare). Without RTX the original packet is sent
        again: that fallback is assumed, not observed."""
        if self._rtx_payload_type is None:
            return original.serialize(self._extensions)
        rtx = wrap_rtx(
            original,
            payload_type=self._rtx_payload_type,
            sequence_number=self._rtx_seq,
            ssrc=self._rtx_ssrc,
        )
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        return rtx.serialize(self._extensions)

    async def _send(self, data: bytes) -> None:
        impairment = self._downlink()
        if impairment is not None and impairment.lost(self._random):
            return
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
