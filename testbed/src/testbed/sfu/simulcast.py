"""Simulcast in the local SFU: the layers a publisher offers, an answer that accepts
them, which layer each subscriber gets, and one clean stream across layer switches.

A publisher (Chrome with ``sendEncodings``) sends each layer as its own RTP stream on one
m-line: its own SSRC, sequence numbers and RTP timestamp base, told apart by the
rtp-stream-id header extension (``rid``); retransmissions carry repaired-rtp-stream-id.
Chrome's offer has ``a=rid:<id> send`` lines, ``a=simulcast:send a;b`` and no ``a=ssrc``
lines; it sends more than its first layer only if the answer has ``a=rid:<id> recv`` and
``a=simulcast:recv`` for them. aiortc knows none of this, so the answer is amended here.

A subscriber receives exactly one layer as one stream (``Splicer``): one SSRC, sequence
numbers without a gap and RTP timestamps that only increase, whatever layer they come
from; a switch happens at a keyframe of the new layer, after the frame in flight on the
old one is complete, so the subscriber never decodes a broken picture.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt, uint16_gte

RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
RID_EXTENSIONS = frozenset({RTP_STREAM_ID, REPAIRED_RTP_STREAM_ID})
"""The header extensions the answer accepts for a simulcast m-line, at the offer's ids."""

LAYER_STALE_S = 1.0
"""A layer with no packet for this long is not available (the publisher stopped it, or
Chrome dropped it for want of bandwidth or CPU)."""
MAX_HOLD_S = 0.25
"""How long the new layer's keyframe waits for the old layer's frame in flight to end
(several frame intervals); past this the old layer is taken to have stopped mid-frame
and the switch goes ahead."""
MAX_ALIGN_S = 5.0
"""A keyframe that the layers' sender reports place this far after the last frame sent,
or before it (a stale report, or an old frame), is stamped just after that frame."""

Ordering = Literal["none", "asciibetical"]
Align = Callable[[str, str], int | None]
"""``align(old, new)``: RTP time of ``old`` minus that of ``new`` at one instant, from
the layers' sender reports; None while either has not sent one."""

_MASK32 = 0xFFFFFFFF
_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28
_VP8_START_CODE = b"\x9d\x01\x2a"

# -- SDP ------------------------------------------------------------------------------


def offered_layers(offer: str) -> dict[str, tuple[str, ...]]:
    """Per mid, the rids a publisher offers to send with simulcast, in its order.

    Only rids listed in ``a=simulcast:send`` that also have an ``a=rid:<id> send`` line
    count; of comma-separated alternatives the first is taken, and a paused rid (``~``)
    is accepted like the others. M-lines without simulcast are absent.
    """
    layers: dict[str, tuple[str, ...]] = {}
    for section in _media_sections(offer):
        lines = section.splitlines()
        mid = _attribute(lines, "mid")
        streams = _attribute(lines, "simulcast")
        if mid is None or streams is None:
            continue
        sendable = {
            parts[0]
            for value in _attributes(lines, "rid")
            if len(parts := value.split()) >= 2 and parts[1] == "send"
        }
        rids = tuple(rid for rid in _send_streams(streams) if rid in sendable)
        if rids:
            layers[mid] = rids
    return layers


def accept_layers(answer: str, layers: Mapping[str, Sequence[str]]) -> str:
    """The answer with ``a=rid:<id> recv`` and ``a=simulcast:recv`` for each offered layer.

    Rid restrictions (``pt=``, ``max-width=``) are not echoed: the SFU takes the layers
    as the publisher encodes them. A rejected m-line (port 0) is left alone.
    """
    eol = "\r\n" if "\r\n" in answer else "\n"
    head, *sections = _split_sections(answer)
    amended = [head]
    for section in sections:
        lines = section.splitlines()
        rids = layers.get(_attribute(lines, "mid") or "")
        if not rids or lines[0].split()[1] == "0":
            amended.append(section)
            continue
        extra = [f"a=rid:{rid} recv" for rid in rids]
        extra.append(f"a=simulcast:recv {';'.join(rids)}")
        amended.append(section.rstrip("\r\n") + eol + eol.join(extra) + eol)
    return "".join(amended)


def _split_sections(sdp: str) -> list[str]:
    """The session part, then one string per m-line, each with its own line endings."""
    return re.split(r"(?m)^(?=m=)", sdp)


def _media_sections(sdp: str) -> list[str]:
    return _split_sections(sdp)[1:]


def _attributes(lines: Sequence[str], name: str) -> list[str]:
    prefix = f"a={name}:"
    return [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]


def _attribute(lines: Sequence[str], name: str) -> str | None:
    values = _attributes(lines, name)
    return values[0] if values else None


def _send_streams(value: str) -> list[str]:
    """The send list of an ``a=simulcast`` value (``send a;b recv c``), first
    alternatives, pause markers removed."""
    tokens = value.split()
    for direction, streams in zip(tokens[::2], tokens[1::2], strict=False):
        if direction == "send":
            return [s.split(",")[0].removeprefix("~") for s in streams.split(";") if s]
    return []


# -- keyframes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Keyframe:
    """The first packet of a keyframe; its picture size when the codec says it cheaply
    (VP8's keyframe header; H.264 would need its SPS decoded, which is not done)."""

    width: int | None = None
    height: int | None = None


def finds_keyframes(mime_type: str) -> bool:
    """Whether ``keyframe_start`` understands this codec's packets."""
    return mime_type.lower() in ("video/vp8", "video/h264")


def keyframe_start(mime_type: str, payload: bytes) -> Keyframe | None:
    """The keyframe this RTP payload starts, if it starts one.

    VP8: the first packet of partition 0 of a key frame. H.264: a packet carrying an SPS
    (Chrome sends SPS and PPS in a STAP-A ahead of every IDR) or the start of an IDR
    slice (encoders that send the SPS once). Malformed payloads start nothing.
    """
    mime = mime_type.lower()
    try:
        if mime == "video/vp8":
            return _vp8_keyframe(payload)
        if mime == "video/h264":
            return Keyframe() if _h264_starts_keyframe(payload) else None
    except (ValueError, IndexError):
        return None
    return None


def _vp8_keyframe(payload: bytes) -> Keyframe | None:
    descriptor, data = VpxPayloadDescriptor.parse(payload)
    if not descriptor.partition_start or descriptor.partition_id != 0 or not data:
        return None
    if data[0] & 0x01:  # the frame tag's P bit: set on inter frames
        return None
    if len(data) >= 10 and data[3:6] == _VP8_START_CODE:
        width = int.from_bytes(data[6:8], "little") & 0x3FFF
        height = int.from_bytes(data[8:10], "little") & 0x3FFF
        return Keyframe(width, height)
    return Keyframe()


def _h264_starts_keyframe(payload: bytes) -> bool:
    nal_type = payload[0] & 0x1F
    if nal_type == _H264_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if payload[pos + 2] & 0x1F in (_H264_SPS, _H264_IDR):
                return True
            pos += 2 + size
        return False
    if nal_type == _H264_FU_A:
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == _H264_IDR
    return nal_type in (_H264_SPS, _H264_IDR)


# -- which layer ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPreference:
    """A subscription's ``simulcast`` object from ``tracks/new`` or ``tracks/update``.

    Cloudflare's reference: ``priorityOrdering`` says what to do when there is not
    enough bandwidth for ``preferredRid`` (``none``: keep sending it); this SFU has no
    bandwidth estimate, so it is kept but changes nothing. ``ridNotAvailable`` says what
    to do when the preferred (or current) rid is not being sent: ``none`` does nothing
    (nothing is forwarded until it comes back), ``asciibetical`` falls back in a-z order,
    ``a`` being the most desirable.
    """

    preferred_rid: str | None = None
    priority_ordering: Ordering = "none"
    rid_not_available: Ordering = "none"

    def updated(
        self,
        preferred_rid: str | None = None,
        priority_ordering: Ordering | None = None,
        rid_not_available: Ordering | None = None,
    ) -> LayerPreference:
        """This preference with the given fields replaced (None: left as it was)."""
        return replace(
            self,
            preferred_rid=preferred_rid or self.preferred_rid,
            priority_ordering=priority_ordering or self.priority_ordering,
            rid_not_available=rid_not_available or self.rid_not_available,
        )


def choose_layer(
    ranked: Sequence[str],
    available: set[str],
    preference: LayerPreference,
    current: str | None,
) -> str | None:
    """The layer a subscription should receive now.

    ``ranked``: every layer the publisher declared, best (largest) first. Without a
    preferred rid the SFU picks the best available layer. Cloudflare picks by its
    bandwidth estimate of the subscriber's downlink; this SFU has none and assumes a
    downlink that takes any layer. With nothing available the current choice stays.

    A preferred rid that is not available is kept under ``ridNotAvailable: none``; under
    ``asciibetical`` the next available rid after it in a-z order is taken, or failing
    that the last before it (assumed: the reference does not say which way "next" goes).
    """
    preferred = preference.preferred_rid
    if preferred is None:
        fallback = current or (ranked[0] if ranked else None)
        return next((rid for rid in ranked if rid in available), fallback)
    if preferred in available or preference.rid_not_available == "none":
        return preferred
    after = sorted(rid for rid in available if rid > preferred)
    before = sorted(rid for rid in available if rid < preferred)
    if after:
        return after[0]
    if before:
        return before[-1]
    return current or preferred


# -- one stream out of several layers -------------------------------------------------


@dataclass
class _Mapping:
    """How one layer's packets land in the output stream, from its cut-over packet on."""

    rid: str
    first_seq: int
    """The layer's own sequence number of its first forwarded packet."""
    seq_offset: int
    ts_offset: int
    end_seq: int | None = None
    """Output sequence number at which the next layer took over (None while current)."""

    def map(self, packet: RtpPacket) -> tuple[int, int] | None:
        """Output (sequence number, timestamp), or None for a packet outside this
        layer's stretch of the output (older than its cut-over, or after the next one)."""
        if uint16_gt(self.first_seq, packet.sequence_number):
            return None
        seq = (packet.sequence_number + self.seq_offset) & 0xFFFF
        if self.end_seq is not None and not uint16_gt(self.end_seq, seq):
            return None
        return seq, (packet.timestamp + self.ts_offset) & _MASK32


Spliced = tuple[RtpPacket, int, int]
"""A packet to send, with its output sequence number and RTP timestamp."""


class Splicer:
    """Joins the layers one subscriber gets over time into one RTP stream.

    The first layer keeps the publisher's timestamps (its sender reports then relay
    unchanged). A later layer's timestamps are shifted so that one capture instant has
    one output timestamp whichever layer carries it: the shift comes from both layers'
    sender reports when they are known, else from arrival time; either way a new layer's
    first frame is stamped after the last frame sent. Sequence numbers continue without
    a gap. A packet of the previous layer that arrives late (a retransmission) is still
    forwarded if it falls before the cut-over.
    """

    def __init__(self, clock_rate: int, first_seq: int) -> None:
        self.clock_rate = clock_rate
        self.target: str | None = None
        """The layer this subscriber should get (set with ``want``)."""
        self.current: str | None = None
        """The layer being forwarded (None before the first, or after ``restart``)."""
        self._next_seq = first_seq & 0xFFFF
        self._last_ts: int | None = None
        self._last_at = 0.0
        self._frame_done = True
        self._live: _Mapping | None = None
        self._previous: _Mapping | None = None
        self._held: list[tuple[RtpPacket, float]] = []

    @property
    def switching(self) -> bool:
        """True while the wanted layer is not the one being forwarded (a keyframe of it
        is needed)."""
        return self.target is not None and self.target != self.current

    def want(self, rid: str | None) -> None:
        if rid != self.target:
            self.target = rid
            self._held.clear()

    def restart(self) -> None:
        """The source changed: the next keyframe of the target starts a fresh mapping,
        continuing this stream's sequence numbers and timestamps."""
        self.current = None
        self._live = self._previous = None
        self._held.clear()
        self._frame_done = True

    def rtp_timestamp(self, rid: str, timestamp: int) -> int | None:
        """A sender report's RTP time of layer ``rid`` in output terms (None: not the
        layer being forwarded, so its report must not be relayed)."""
        if self._live is None or rid != self.current:
            return None
        return (timestamp + self._live.ts_offset) & _MASK32

    def push(
        self, packet: RtpPacket, rid: str, keyframe: bool, now: float, align: Align
    ) -> list[Spliced]:
        """What to send for one packet of layer ``rid`` that arrived at ``now``.

        ``keyframe``: the packet starts a keyframe (always true for audio, and for video
        codecs whose keyframes cannot be told).
        """
        if rid == self.current and self._live is not None:
            sent = self._forward(self._live, packet, now)
            if self._held and packet.marker:
                sent += self._cut_over(align)
            return sent
        if rid == self.target:
            if self._held:
                self._held.append((packet, now))
                return self._cut_over(align) if now - self._held[0][1] > MAX_HOLD_S else []
            if not keyframe:
                return []
            self._held.append((packet, now))
            return self._cut_over(align) if self._frame_done or self._live is None else []
        if self._previous is not None and rid == self._previous.rid:
            return self._forward(self._previous, packet, now)
        return []

    def _forward(self, mapping: _Mapping, packet: RtpPacket, now: float) -> list[Spliced]:
        mapped = mapping.map(packet)
        if mapped is None:
            return []
        seq, timestamp = mapped
        if uint16_gte(seq, self._next_seq):
            self._next_seq = (seq + 1) & 0xFFFF
            self._last_ts = timestamp
            self._last_at = now
            self._frame_done = bool(packet.marker)
        return [(packet, seq, timestamp)]

    def _cut_over(self, align: Align) -> list[Spliced]:
        """Start forwarding the target from the held keyframe on."""
        held, self._held = self._held, []
        keyframe, arrived = held[0]
        assert self.target is not None
        mapping = _Mapping(
            rid=self.target,
            first_seq=keyframe.sequence_number,
            seq_offset=(self._next_seq - keyframe.sequence_number) & 0xFFFF,
            ts_offset=self._timestamp_offset(keyframe, arrived, align),
        )
        if self._live is not None:
            self._live.end_seq = self._next_seq
            self._previous = self._live
        self._live = mapping
        self.current = self.target
        sent: list[Spliced] = []
        for packet, now in held:
            sent += self._forward(mapping, packet, now)
        return sent

    def _timestamp_offset(self, keyframe: RtpPacket, arrived: float, align: Align) -> int:
        """The shift of the new layer's timestamps. The layers' reports place its
        keyframe on the old layer's clock; that is usually the very instant of the old
        layer's last frame (both layers encode every captured frame), and then the
        keyframe is stamped one tick later, so timestamps still only increase."""
        if self._last_ts is None:
            return 0
        if self._live is not None and self.current is not None and self.target is not None:
            delta = align(self.current, self.target)
            if delta is not None:
                aligned = (keyframe.timestamp + self._live.ts_offset + delta) & _MASK32
                ahead = (aligned - self._last_ts) & _MASK32
                if ahead == 0 or ahead >= MAX_ALIGN_S * self.clock_rate:
                    aligned = (self._last_ts + 1) & _MASK32
                return (aligned - keyframe.timestamp) & _MASK32
        elapsed = max(1, round((arrived - self._last_at) * self.clock_rate))
        return (self._last_ts + elapsed - keyframe.timestamp) & _MASK32
