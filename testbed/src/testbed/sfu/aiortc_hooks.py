"""Every use of aiortc 1.16 private API by the local SFU, in one place.

aiortc has no public hook for forwarding RTP without decoding it, so the SFU patches a
few methods on *instances* (never on classes: the recorder and the synthetic participants
share the process in tests) and calls a few private senders. If aiortc changes, this is
the only module to revisit; the names used are:

- ``RTCRtpReceiver._handle_rtp_packet`` / ``_handle_rtcp_packet``: where the DTLS
  transport's router delivers a session's incoming RTP/RTCP.
- ``RTCRtpReceiver._send_rtcp_pli`` / ``_send_rtcp_nack`` / ``_send_rtcp`` and
  ``_RTCRtpReceiver__rtcp_ssrc``: feedback to a publisher (PLI, NACK, REMB).
- ``RTCRtpSender._run_rtcp``, ``_RTCRtpSender__rtcp_started`` / ``__rtcp_exited``: the
  sender's RTCP loop and the events ``stop()`` waits on.
- ``RTCRtpSender._handle_rtcp_packet``, ``RTCRtpSender._ssrc``, ``RTCRtpSender.send``.
- ``RTCDtlsTransport._send_rtp``: writes one SRTP/SRTCP-protected datagram.
- ``RTCRtpTransceiver._codecs``: the codecs negotiated on an m-line (read, and replaced
  before an answer is made).
- ``RTCRtpSender._rtx_ssrc``: the SSRC aiortc announces for a sender's RTX stream.
- ``RTCRtpTransceiver._headerExtensions``: the header extensions an answer lists (and
  the transport then parses), extended for simulcast's rid extensions.
- ``RTCIceTransport._connection`` / ``_role_set`` and, on the aioice ``Connection``:
  ``connect``, ``check_incoming``, ``switch_role``, ``close``, ``ice_controlling``,
  ``_tie_breaker``, ``_early_checks(_done)``, ``_check_list(_done)``,
  ``_check_list_state``, ``_local_candidates_end``, ``_remote_candidates``,
  ``_nominated``, ``_query_consent_task``, ``_find_pair`` and ``CandidatePair``: what
  turns a full ICE agent into a lite one (``make_ice_lite``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import ICE_COMPLETED, CandidatePair, StunProtocol
from aioice.utils import random_string
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)

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


async def send_remb(receiver: RTCRtpReceiver, bitrate: int, media_ssrcs: list[int]) -> None:
    """Tell a publisher the bitrate it may send on these SSRCs (REMB)."""
    target: Any = receiver
    rtcp_ssrc: int | None = target._RTCRtpReceiver__rtcp_ssrc
    if rtcp_ssrc is not None:
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, media_ssrcs)
        )
        await target._send_rtcp(packet)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def answer_with(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Make the answer for an offered m-line list exactly ``codecs``.

    Call between applying the client's offer and creating the answer. aiortc would answer
    with every codec it matched, in its own format and, for numbers outside 96-127, its
    own payload types; the SFU forwards one codec per track and answers with the
    publisher's own number and format (an H.264 profile aiortc refuses included).
    """
    target: Any = transceiver
    target._codecs = list(codecs)


def accept_header_extensions(
    transceiver: RTCRtpTransceiver,
    offered: list[RTCRtpHeaderExtensionParameters],
    uris: frozenset[str],
) -> None:
    """Answer the offered header extensions among ``uris`` too, at the offer's ids.

    Call between applying the client's offer and creating the answer. aiortc answers
    only the extensions it knows (mid, abs-send-time, audio level), but its RTP parser
    reads rtp-stream-id and repaired-rtp-stream-id once they are negotiated: the answer
    then lists them and the transport parses them into ``packet.extensions``.
    """
    target: Any = transceiver
    answered: list[RTCRtpHeaderExtensionParameters] = target._headerExtensions
    known = {extension.uri for extension in answered}
    answered.extend(e for e in offered if e.uri in uris and e.uri not in known)


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


def sender_rtx_ssrc(sender: RTCRtpSender) -> int:
    """The RTX SSRC aiortc writes in ``a=ssrc-group:FID`` for this sender."""
    ssrc: int = sender._rtx_ssrc
    return ssrc


async def send_datagram(sender: RTCRtpSender, data: bytes) -> None:
    """Protect and send one RTP or RTCP packet on the sender's (bundled) transport.

    Raises ``ConnectionError`` while the transport is not connected.
    """
    transport: Any = sender.transport
    await transport._send_rtp(data)


def make_ice_lite(pc: RTCPeerConnection, consent_expiry_s: float) -> None:
    """Make every ICE transport of ``pc`` a lite, always-controlled agent (RFC 8445 §2.5).

    Call after each change that may create transports (adding a transceiver, applying a
    remote offer), before the transport starts; transports already converted are left
    alone. aiortc would otherwise run full ICE: connectivity checks, nomination and
    consent checks of its own.
    """
    for transceiver in pc.getTransceivers():
        ice: Any = transceiver.receiver.transport.transport
        # aiortc sets the role from the first description unless told it is set.
        ice._role_set = True
        connection = ice._connection
        if getattr(connection, "_sfu_lite_agent", None) is None:
            connection._sfu_lite_agent = _LiteAgent(connection, consent_expiry_s)


class _LiteAgent:
    """The lite behaviour of one aioice ``Connection``, installed on that instance only.

    It answers checks (aioice's own ``request_received`` still sends the responses) but
    never sends one: a pair is valid as soon as a check arrives on it, and nominated when
    a check carries USE-CANDIDATE. With no consent checks of its own, a peer is dead when
    no check has arrived for ``consent_expiry_s`` (RFC 7675: 30 s); the connection then
    closes, which fails the PeerConnection as aiortc's own consent failure does.
    """

    def __init__(self, connection: Any, consent_expiry_s: float) -> None:
        self._connection = connection
        self._expiry_s = consent_expiry_s
        self._last_check: float | None = None
        connection.ice_controlling = False
        # A controlled peer's check then always loses the tie-break: the lite agent answers
        # 487 Role Conflict and the peer switches to controlling (RFC 8445 §7.3.1.1).
        connection._tie_breaker = 0
        connection.connect = self.connect
        connection.check_incoming = self.check_incoming
        connection.switch_role = self._keep_role

    async def connect(self) -> None:
        connection = self._connection
        if not connection._local_candidates_end:
            raise ConnectionError("Local candidates gathering was not performed")
        if connection.remote_username is None or connection.remote_password is None:
            raise ConnectionError("Remote username or password is missing")
        for early in list(connection._early_checks):
            self.check_incoming(*early)
        connection._early_checks.clear()
        connection._early_checks_done = True
        try:
            # Completed by a USE-CANDIDATE check, failed by close().
            result = await asyncio.wait_for(connection._check_list_state.get(), self._expiry_s)
        except TimeoutError:
            connection._check_list_done = True
            raise ConnectionError("ICE failed: the controlling agent nominated no pair") from None
        if result != ICE_COMPLETED:
            raise ConnectionError("ICE negotiation failed")
        connection._query_consent_task = asyncio.ensure_future(self._expire_consent())

    def check_incoming(
        self, message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        connection = self._connection
        self._last_check = asyncio.get_running_loop().time()
        component = protocol.local_candidate.component
        remote = next(
            (
                c
                for c in connection._remote_candidates
                if c._network_host == addr[0] and c.port == addr[1]
            ),
            None,
        )
        if remote is None:
            # A peer-reflexive candidate, learnt from the check (RFC 8445 §7.3.1.3).
            remote = Candidate(
                foundation=random_string(10),
                component=component,
                transport="udp",
                priority=message.attributes.get("PRIORITY", 0),
                host=addr[0],
                port=addr[1],
                type="prflx",
            )
            connection._remote_candidates.append(remote)
        pair = connection._find_pair(protocol, remote)
        if pair is None:
            pair = CandidatePair(protocol, remote)
            connection._check_list.append(pair)
        pair.state = CandidatePair.State.SUCCEEDED
        if "USE-CANDIDATE" in message.attributes:
            pair.nominated = pair.remote_nominated = True
            connection._nominated[component] = pair
            if not connection._check_list_done:
                connection._check_list_done = True
                connection._check_list_state.put_nowait(ICE_COMPLETED)

    def _keep_role(self, ice_controlling: bool) -> None:
        """A lite agent is always the controlled one."""

    async def _expire_consent(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            last = self._last_check if self._last_check is not None else loop.time()
            remaining = last + self._expiry_s - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        connection = self._connection
        # close() cancels this task unless it is forgotten first, as aioice's own does.
        connection._query_consent_task = None
        with contextlib.suppress(Exception):
            await connection.close()
