"""Every use of aiortc 1.16 private API by the local SFU, in one place.

aiortc has no public hook for forwarding RTP without decoding it, so the SFU patches a
few methods on *instances* (never on classes: the recorder and the synthetic participants
share the process in tests) and calls a few private senders. If aiortc changes, this is
the only module to revisit; the names used are:

- ``RTCRtpReceiver._handle_rtp_packet`` / ``_handle_rtcp_packet``: where the DTLS
  transport's router delivers a session's incoming RTP/RTCP.
- ``RTCRtpReceiver._send_rtcp_pli`` / ``_send_rtcp_nack``: feedback to a publisher.
- ``RTCRtpSender._run_rtcp``, ``_RTCRtpSender__rtcp_started`` / ``__rtcp_exited``: the
  sender's RTCP loop and the events ``stop()`` waits on.
- ``RTCRtpSender._handle_rtcp_packet``, ``RTCRtpSender._ssrc``, ``RTCRtpSender.send``.
- ``RTCDtlsTransport._send_rtp``: writes one SRTP/SRTCP-protected datagram.
- ``RTCRtpTransceiver._codecs``: the codecs negotiated on an m-line (read, and trimmed
  before an answer is made).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import AnyRtcpPacket, RtcpSrPacket, RtpPacket

RtpHandler = Callable[[RtpPacket], Awaitable[None]]
SrHandler = Callable[[RtcpSrPacket], Awaitable[None]]
RtcpHandler = Callable[[AnyRtcpPacket], Awaitable[None]]


def forward_instead_of_decoding(
    receiver: RTCRtpReceiver, on_rtp: RtpHandler, on_sender_report: SrHandler
) -> None:
    """Send a publisher's packets to ``on_rtp`` instead of the jitter buffer and decoder.

    Must run before the transport connects, so no packet reaches the decoder. RTCP still
    reaches aiortc's own handler afterwards (it keeps stats and stops the idle decoder
    thread on BYE).
    """
    target: Any = receiver
    original_rtcp = target._handle_rtcp_packet

    async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        await on_rtp(packet)

    async def handle_rtcp(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket):
            await on_sender_report(packet)
        await original_rtcp(packet)

    target._handle_rtp_packet = handle_rtp
    target._handle_rtcp_packet = handle_rtcp


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
    await receiver._send_rtcp_nack(media_ssrc, lost)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def answer_only_first_codec(transceiver: RTCRtpTransceiver) -> None:
    """Keep only the first codec both sides support (and its RTX) on an offered m-line.

    Call between applying the client's offer and creating the answer. aiortc would answer
    with every common codec (Chrome's offer has VP8, several H.264 profiles, G722, ...),
    allowing the client to switch among them, but the SFU forwards one codec per track.
    """
    target: Any = transceiver
    codecs: list[RTCRtpCodecParameters] = target._codecs
    primary = next((c for c in codecs if not is_rtx(c)), None)
    if primary is not None:
        target._codecs = [
            c
            for c in codecs
            if c is primary or (is_rtx(c) and c.parameters.get("apt") == primary.payloadType)
        ]


def take_over_sender(
    sender: RTCRtpSender,
    on_start: Callable[[RTCRtpSendParameters], None],
    on_rtcp: RtcpHandler,
) -> None:
    """Turn an idle sender into an outlet for forwarded packets.

    Its RTP loop never sends (its track never yields a frame), so aiortc's own RTCP loop
    would only emit sender reports with NTP 0 / RTP 0: it is replaced, before ``send()``
    starts it, by a loop that only sets the events ``stop()`` waits on. Feedback from the
    subscriber (NACK, PLI, FIR) goes to ``on_rtcp`` instead of aiortc's encoder logic, and
    ``on_start`` receives the negotiated send parameters (payload type, extension ids, mid).
    """
    target: Any = sender
    started: asyncio.Event = target._RTCRtpSender__rtcp_started
    exited: asyncio.Event = target._RTCRtpSender__rtcp_exited
    original_send = target.send

    async def quiet_rtcp() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            exited.set()

    async def send(parameters: RTCRtpSendParameters) -> None:
        first = not sender_started(sender)
        await original_send(parameters)
        if first:
            on_start(parameters)

    target._run_rtcp = quiet_rtcp
    target._handle_rtcp_packet = on_rtcp
    target.send = send


def sender_started(sender: RTCRtpSender) -> bool:
    target: Any = sender
    started: bool = target._RTCRtpSender__started
    return started


def sender_ssrc(sender: RTCRtpSender) -> int:
    ssrc: int = sender._ssrc
    return ssrc


async def send_datagram(sender: RTCRtpSender, data: bytes) -> None:
    """Protect and send one RTP or RTCP packet on the sender's (bundled) transport.

    Raises ``ConnectionError`` while the transport is not connected.
    """
    transport: Any = sender.transport
    await transport._send_rtp(data)
