"""Real WebRTC through the local SFU: aiortc publisher -> SFU -> aiortc puller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription, clock
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtp import AnyRtcpPacket, RtcpSrPacket, RtpPacket
from testbed.sfu import LocalSfu

from bot.realtime import RealtimeClient, SessionDescription, TrackObject

WAIT_S = 10.0


@dataclass
class Publisher:
    session_id: str
    pc: RTCPeerConnection
    tracks: dict[str, MediaStreamTrack]


@dataclass
class Puller:
    session_id: str
    pc: RTCPeerConnection
    received: dict[str, MediaStreamTrack] = field(default_factory=dict)
    sender_reports: list[tuple[str, RtcpSrPacket]] = field(default_factory=list)
    last_rtp: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per kind: (SSRC, RTP timestamp) of the last packet that arrived."""
    got_report: asyncio.Event = field(default_factory=asyncio.Event)


def _desc(pc: RTCPeerConnection) -> SessionDescription:
    return SessionDescription(type=pc.localDescription.type, sdp=pc.localDescription.sdp)


async def _publish(client: RealtimeClient) -> Publisher:
    session = await client.new_session()
    pc = RTCPeerConnection()
    tracks: dict[str, MediaStreamTrack] = {"mic": AudioStreamTrack(), "cam": VideoStreamTrack()}
    transceivers = {
        name: pc.addTransceiver(track, direction="sendonly") for name, track in tracks.items()
    }
    await pc.setLocalDescription(await pc.createOffer())
    result = await client.new_tracks(
        session.sessionId,
        [
            TrackObject(location="local", mid=t.mid, trackName=name)
            for name, t in transceivers.items()
        ],
        _desc(pc),
    )
    assert result.sessionDescription is not None
    assert not result.requiresImmediateRenegotiation
    await pc.setRemoteDescription(
        RTCSessionDescription(sdp=result.sessionDescription.sdp, type="answer")
    )
    return Publisher(session.sessionId, pc, tracks)


def _watch(receiver: RTCRtpReceiver, kind: str, puller: Puller) -> None:
    """Record the raw RTP timestamps and SRs the puller gets (aiortc drops both)."""
    original_rtcp = receiver._handle_rtcp_packet
    original_rtp = receiver._handle_rtp_packet

    async def handle_rtcp(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket) and kind in puller.last_rtp:
            puller.sender_reports.append((kind, packet))
            puller.got_report.set()
        await original_rtcp(packet)

    async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        puller.last_rtp[kind] = (packet.ssrc, packet.timestamp)
        await original_rtp(packet, arrival_time_ms)

    receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
    receiver._handle_rtp_packet = handle_rtp  # type: ignore[method-assign]


async def _pull(client: RealtimeClient, publisher: Publisher) -> tuple[Puller, str]:
    session = await client.new_session()
    puller = Puller(session.sessionId, RTCPeerConnection())
    offers: list[str] = []

    @puller.pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        puller.received[track.kind] = track

    async def answer(offer: SessionDescription) -> SessionDescription:
        offers.append(offer.sdp)
        await puller.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        for transceiver in puller.pc.getTransceivers():
            _watch(transceiver.receiver, transceiver.kind, puller)
        await puller.pc.setLocalDescription(await puller.pc.createAnswer())
        return _desc(puller.pc)

    result = await client.pull_tracks(
        session.sessionId,
        [
            TrackObject(location="remote", sessionId=publisher.session_id, trackName=name)
            for name in publisher.tracks
        ],
        answer,
    )
    assert [t.failed for t in result.tracks] == [False, False]
    return puller, offers[0]


@asynccontextmanager
async def _call(sfu: LocalSfu, app: Any) -> AsyncIterator[tuple[Publisher, Puller, str]]:
    async with RealtimeClient(app.app_id, app.app_secret, base_url=sfu.base_url) as client:
        publisher = await _publish(client)
        puller, offer = await _pull(client, publisher)
        try:
            yield publisher, puller, offer
        finally:
            await puller.pc.close()
            await publisher.pc.close()


async def test_pulled_audio_and_video_decode_and_carry_publisher_sender_reports(
    sfu: LocalSfu, sfu_app: Any
) -> None:
    async with _call(sfu, sfu_app) as (_, puller, offer):
        assert "a=ssrc:" in offer
        audio = await asyncio.wait_for(puller.received["audio"].recv(), WAIT_S)
        video = await asyncio.wait_for(puller.received["video"].recv(), WAIT_S)
        assert audio.sample_rate == 48000
        assert (video.width, video.height) == (640, 480)
        await asyncio.wait_for(puller.got_report.wait(), WAIT_S)
        kind, report = puller.sender_reports[0]
        ssrc, last_timestamp = puller.last_rtp[kind]
        clock_rate = 48000 if kind == "audio" else 90000
        # The SFU relays the publisher's own pair: NTP is now (not aiortc's idle 0) ...
        now_s = clock.current_ntp_time() / 2**32
        assert abs(report.sender_info.ntp_timestamp / 2**32 - now_s) < 5
        # ... on the SSRC the puller receives, and the RTP half matches the packets'
        # timestamps, which the SFU keeps as the publisher sent them.
        assert report.ssrc == ssrc
        drift = (report.sender_info.rtp_timestamp - last_timestamp) % 2**32
        assert min(drift, 2**32 - drift) < 2 * clock_rate
        assert report.sender_info.packet_count > 0


async def test_no_sender_reports_when_disabled_and_no_ssrc_lines(
    sfu_factory: Any, sfu_app: Any
) -> None:
    sfu = await sfu_factory(sender_reports=False, ssrc_in_sdp=False)
    async with _call(sfu, sfu_app) as (_, puller, offer):
        assert "a=ssrc" not in offer
        # Media still flows (the puller routes by payload type here) ...
        await asyncio.wait_for(puller.received["video"].recv(), WAIT_S)
        for _ in range(60):
            await asyncio.wait_for(puller.received["audio"].recv(), WAIT_S)
        # ... but over more than one SR interval (0.5-1.5 s) no SR arrived.
        assert puller.sender_reports == []


pytestmark = pytest.mark.timeout(60)
