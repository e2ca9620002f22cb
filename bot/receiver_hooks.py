"""Every use of aiortc's private API by the recorder, in one place.

aiortc 1.16 gives no public way to read RTCP sender reports' RTP half, to see a packet's
arrival before its jitter buffer, to keep real RTP timestamps on decoded frames, to route
packets by the MID header extension, or to ask for a keyframe. Each hook below wraps one
private method on one instance; none changes aiortc's behaviour beyond what is described.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.rtp import RtcpSrPacket

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


def request_keyframe(receiver: Any, ssrc: int) -> asyncio.Task[None]:
    """Send a PLI for ``ssrc``: aiortc never asks for a keyframe when a track starts."""
    return asyncio.ensure_future(receiver._send_rtcp_pli(ssrc))
