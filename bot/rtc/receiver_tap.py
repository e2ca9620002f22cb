"""The recorder's own handling of received RTP, in front of aiortc's jitter buffer.

Kept apart from ``aiortc_compat`` so that what is decided here (which packets reach the
clock, when a lost packet is asked for again, which jitter buffer and queue sizes each
kind gets) can change without touching aiortc's private API, and the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc.codecs import is_rtx
from aiortc.rtp import RtcpSrPacket
from aiortc.utils import uint16_add, uint16_gt

from bot.rtc.aiortc_compat import AudioPassThrough, LossTolerantJitterBuffer, ReceiverHooks
from bot.rtc.buffers import (
    AudioReorder,
    BoundedDecoderQueue,
    DroppingFrameQueue,
    EncodedSink,
    FrameOpener,
)
from bot.rtc.clock import NTP_UNIX_OFFSET, StreamClock

VIDEO_GIVE_UP_PACKETS = 48
"""Later video packets a lost one is waited for (retransmissions get a few round trips)."""
VIDEO_JITTER_PACKETS = 512
"""As aiortc's own video jitter buffer: room for the packets of a large keyframe."""
NACK_RETRY_SECONDS = 0.1
"""A packet still missing is asked for again after this long: aiortc asks only when a new
gap appears, so a retransmission lost too (or a lost NACK) left the picture frozen until
the jitter buffer gave up and a keyframe came."""
ENCODED_FRAMES_KEPT = {"video": 60, "audio": 250}
"""Encoded frames waiting for aiortc's decoder thread before the oldest go."""
DECODED_FRAMES_KEPT = {"video": 30, "audio": 250}
"""Decoded frames waiting for our reader before the oldest go."""


class ReceiverTap:
    """What the recorder hears from one aiortc receiver, before aiortc's jitter buffer.

    Installed once per receiver. An m-line outlives its track: after ``tracks/close``
    Cloudflare may put a later track on the same m-line, so ``retarget`` gives the tap the
    new track's clock and payload types and starts its buffers afresh.

    Only packets of a media payload type reach the clock, liveness and keyframe logic.
    Retransmissions (RTX, on their own SSRC) go to aiortc, which unwraps them into the
    media stream, so they land in place in the jitter buffer; when the offer had no
    ``a=ssrc-group:FID`` line the RTX SSRC is learned from the first one that arrives.
    Anything else (RED, FEC, a codec that was not negotiated) is counted and dropped.
    """

    def __init__(
        self,
        receiver: Any,
        kind: str,
        opener: FrameOpener | None = None,
        *,
        decode: bool = True,
    ) -> None:
        """``decode``: False when nothing needs decoded frames (the track archive alone)."""
        self.kind = kind
        self.clock: StreamClock | None = None
        self._media: frozenset[int] = frozenset()
        self._rtx: frozenset[int] = frozenset()
        self._on_packet: Callable[[int], None] | None = None
        self._jitter: LossTolerantJitterBuffer | None = None
        self._reorder: AudioReorder | None = None
        self._last_nack = 0.0
        self.nack_retries = 0
        self.accepting = False
        """False for a declined m-line: every packet is dropped before parsing."""
        self.rtx_packets = 0
        self.foreign_packets = 0
        self.foreign_payload_type: int | None = None
        self._frames = DroppingFrameQueue(DECODED_FRAMES_KEPT[kind])
        self._encoded = BoundedDecoderQueue(ENCODED_FRAMES_KEPT[kind], opener, decode=decode)
        self._aiortc = ReceiverHooks(
            receiver,
            on_rtp=self._on_rtp,
            on_rtcp=self._on_rtcp,
            frame_timestamp=self._frame_timestamp,
            decoder_queue=self._encoded,
            frame_queue=self._frames,
        )

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
        self._encoded.archive = None  # the m-line's previous track's file
        self._media = frozenset(c.payloadType for c in codecs if not is_rtx(c))
        self._rtx = frozenset(c.payloadType for c in codecs if is_rtx(c))
        self._on_packet = on_packet
        self.accepting = True
        self.rtx_packets = self.foreign_packets = 0
        self.foreign_payload_type = None
        if self.kind == "audio":
            buffer: Any = AudioPassThrough()
            self._reorder = AudioReorder()
        else:
            buffer = self._jitter = LossTolerantJitterBuffer(
                VIDEO_JITTER_PACKETS, VIDEO_GIVE_UP_PACKETS
            )
        self._aiortc.use_jitter_buffer(buffer)
        self._aiortc.add_codecs(codecs)
        while not self._frames.empty():  # frames of the m-line's previous track
            self._frames.get_nowait()

    @property
    def video_losses(self) -> int:
        """Times video packets were given up on this m-line's current track (0 for
        audio): a frame after one may refer to what was lost."""
        return self._jitter.losses if self._jitter is not None else 0

    def archive_to(self, sink: EncodedSink | None) -> None:
        """Hand every opened encoded frame to ``sink`` from now on (None: to no one)."""
        self._encoded.archive = sink

    @property
    def unopened_frames(self) -> int:
        """Encoded frames dropped because they could not be opened (encrypted media)."""
        return self._encoded.unopened

    def unreadable(self, within: float) -> bool:
        """Whether the latest frames, within the last ``within`` seconds, were ciphertext
        this recorder could not open (so the gap they leave has that reason)."""
        encoded = self._encoded
        recent = time.monotonic() - encoded.last_unopened < within
        return recent and encoded.last_unopened > encoded.last_opened

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
                self._aiortc.learn_rtx_ssrc(packet.ssrc, clock.ssrc)
            await self._aiortc.handle_rtp(packet, arrival_time_ms=arrival_time_ms)
            return
        if payload_type not in self._media:
            self.foreign_packets += 1
            self.foreign_payload_type = payload_type
            return
        # aiortc's arrival time (ms since 1900): the kernel's, when read in batches
        clock.on_packet(packet.ssrc, packet.timestamp, arrival_time_ms / 1000 - NTP_UNIX_OFFSET)
        if self._on_packet is not None:
            self._on_packet(packet.ssrc)
        if self._reorder is None:
            newest = self._aiortc.newest_seq()
            await self._aiortc.handle_rtp(packet, arrival_time_ms=arrival_time_ms)
            await self._nack_again(newest, packet.ssrc)
            return
        for ready in self._reorder.push(packet):
            await self._aiortc.handle_rtp(ready, arrival_time_ms=arrival_time_ms)

    async def _nack_again(self, newest: int | None, ssrc: int) -> None:
        """Ask again for packets still missing, every ``NACK_RETRY_SECONDS``, while the
        jitter buffer still waits for them. ``newest`` is the highest sequence number
        seen before this packet."""
        now, highest = time.monotonic(), self._aiortc.newest_seq()
        if highest is None:
            return
        if newest is not None and uint16_gt(highest, uint16_add(newest, 1)):
            self._last_nack = now  # a new gap: aiortc has just asked
            return
        missing = self._aiortc.missing_seqs()
        if not missing or now - self._last_nack < NACK_RETRY_SECONDS:
            return
        waiting = sorted(
            seq for seq in missing if uint16_add(highest, -seq) < VIDEO_GIVE_UP_PACKETS
        )
        self._last_nack = now
        if waiting:
            self.nack_retries += 1
            await self._aiortc.send_nack(ssrc, waiting)

    async def _on_rtcp(self, packet: Any) -> None:
        clock = self.clock
        if isinstance(packet, RtcpSrPacket) and clock is not None:
            clock.on_sender_report(
                packet.ssrc, packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp
            )
        await self._aiortc.handle_rtcp(packet)

    def _frame_timestamp(self, timestamp: int) -> int:
        """Frames keep their extended RTP timestamp: aiortc's own mapping rebases to 0 and
        turns a step back into a 13-hour jump forwards."""
        clock = self.clock
        assert clock is not None, "frames come only from packets the tap accepted"
        return clock.frame_timestamp(timestamp)
