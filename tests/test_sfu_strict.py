"""The local SFU is as strict as Cloudflare's: ICE-lite, SDP shape, RTX, m-line reuse."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aioice import stun
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtp import RtpPacket
from testbed.sfu import LocalSfu, sdp_shape

from bot.realtime import RealtimeClient
from bot.synthetic.participant import SyntheticParticipant
from tests.conftest import new_session, sfu_api

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
_VP8_AND_RTX = ("video/VP8", "video/rtx")


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


async def _publish(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection], names: tuple[str, ...] = ("mic", "cam")
) -> tuple[str, str]:
    """Publish aiortc tracks (``mic*`` audio, others VP8 video); (session id, SFU answer)."""
    session_id = await new_session(http)
    pc = RTCPeerConnection()
    pcs.append(pc)
    connected = asyncio.Event()
    pc.on(
        "connectionstatechange",
        lambda: connected.set() if pc.connectionState == "connected" else None,
    )
    vp8 = [c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.mimeType in _VP8_AND_RTX]
    for name in names:
        track = AudioStreamTrack() if name.startswith("mic") else VideoStreamTrack()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        if track.kind == "video":
            transceiver.setCodecPreferences(vp8)
    await pc.setLocalDescription(await pc.createOffer())
    mids = {name: t.mid or "" for name, t in zip(names, pc.getTransceivers(), strict=True)}
    response = await http.post(
        f"/sessions/{session_id}/tracks/new",
        json={
            "sessionDescription": {"type": "offer", "sdp": pc.localDescription.sdp},
            "tracks": [{"location": "local", "mid": m, "trackName": n} for n, m in mids.items()],
        },
    )
    assert response.status_code == 200, response.text
    answer: str = response.json()["sessionDescription"]["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.wait_for(connected.wait(), WAIT_S)
    return session_id, answer


def _pull_body(publisher: str, *names: str) -> dict[str, Any]:
    return {
        "tracks": [
            {"location": "remote", "sessionId": publisher, "trackName": name} for name in names
        ]
    }


@dataclass
class Puller:
    session_id: str
    pc: RTCPeerConnection
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    offers: list[str] = field(default_factory=list)


async def _puller(http: httpx.AsyncClient, pcs: list[RTCPeerConnection]) -> Puller:
    puller = Puller(await new_session(http), RTCPeerConnection())
    pcs.append(puller.pc)
    puller.pc.on("track", lambda track: puller.tracks.__setitem__(track.kind, track))
    return puller


async def _answer(
    http: httpx.AsyncClient,
    puller: Puller,
    offer: str,
    edit: Callable[[str], str] = lambda sdp: sdp,
    before_answer: Callable[[RTCPeerConnection], None] = lambda pc: None,
) -> None:
    puller.offers.append(offer)
    await puller.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    before_answer(puller.pc)
    await puller.pc.setLocalDescription(await puller.pc.createAnswer())
    response = await http.put(
        f"/sessions/{puller.session_id}/renegotiate",
        json={
            "sessionDescription": {"type": "answer", "sdp": edit(puller.pc.localDescription.sdp)}
        },
    )
    assert response.status_code == 200, response.text


async def _pull(http: httpx.AsyncClient, puller: Puller, publisher: str, *names: str) -> Any:
    response = await http.post(
        f"/sessions/{puller.session_id}/tracks/new", json=_pull_body(publisher, *names)
    )
    assert response.status_code == 200, response.text
    return response.json()


def _session_lines(sdp: str) -> list[str]:
    return sdp_shape.split(sdp)[0]


def _sfu_connections(sfu: LocalSfu) -> list[Any]:
    registry: Any = sfu._registry
    return [
        t.receiver.transport.transport._connection
        for session in registry._sessions.values()
        for t in session.pc.getTransceivers()
    ]


# -- ICE-lite -----------------------------------------------------------------------


async def test_sfu_is_ice_lite_answers_checks_and_never_sends_one(
    sfu: LocalSfu, http: httpx.AsyncClient, pcs: list[RTCPeerConnection], monkeypatch: Any
) -> None:
    sent: list[tuple[Any, stun.Class]] = []
    original = StunProtocol.send_stun

    def counting(self: StunProtocol, message: stun.Message, addr: tuple[str, int]) -> None:
        sent.append((self.receiver, message.message_class))
        original(self, message, addr)

    # Test-only class patch: every agent in the process is counted, the SFU's picked out.
    monkeypatch.setattr(StunProtocol, "send_stun", counting)
    publisher, answer = await _publish(http, pcs)
    puller = await _puller(http, pcs)
    pulled = await _pull(http, puller, publisher, "mic", "cam")
    await _answer(http, puller, pulled["sessionDescription"]["sdp"])
    frame = await asyncio.wait_for(_first_frame(puller, "audio"), WAIT_S)
    assert frame is not None

    ours = {id(c) for c in _sfu_connections(sfu)}
    from_sfu = [cls for receiver, cls in sent if id(receiver) in ours]
    assert stun.Class.RESPONSE in from_sfu
    assert stun.Class.REQUEST not in from_sfu
    # Every client is the controlling agent and nominated a pair.
    for pc in pcs:
        ice = pc.getTransceivers()[0].receiver.transport.transport
        assert ice.role == "controlling"
    for connection in _sfu_connections(sfu):
        assert connection.ice_controlling is False
    assert "a=ice-lite" in _session_lines(answer)
    assert "a=ice-lite" in _session_lines(pulled["sessionDescription"]["sdp"])


async def _first_frame(puller: Puller, kind: str) -> Any:
    # The track event fired while the puller applied the offer.
    return await puller.tracks[kind].recv()


async def test_no_incoming_check_for_the_consent_expiry_kills_the_session(
    sfu_factory: Any, sfu_app: Any, pcs: list[RTCPeerConnection]
) -> None:
    # aiortc clients check consent every 4-6 s: with a 1 s expiry the SFU hears none in time.
    sfu = await sfu_factory(consent_expiry_s=1.0, session_expiry_s=0.1)
    async with sfu_api(sfu, sfu_app) as http:
        publisher, _ = await _publish(http, pcs, ("mic",))
        registry: Any = sfu._registry
        session = registry._sessions[publisher]
        dead = asyncio.Event()
        session.pc.on(
            "connectionstatechange",
            lambda: dead.set() if session.pc.connectionState in ("failed", "closed") else None,
        )
        await asyncio.wait_for(dead.wait(), WAIT_S)

        async def gone() -> None:
            # Expiry is only observable over HTTP: poll it, bounded by wait_for below.
            while (await http.get(f"/sessions/{publisher}")).status_code != 410:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(gone(), WAIT_S)


# -- SDP shape ----------------------------------------------------------------------


async def test_offers_and_answers_carry_cloudflare_session_attributes(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, answer = await _publish(http, pcs)
    puller = await _puller(http, pcs)
    offer = (await _pull(http, puller, publisher, "mic", "cam"))["sessionDescription"]["sdp"]
    for sdp, setup in ((answer, None), (offer, "a=setup:actpass")):
        session, media = sdp_shape.split(sdp)
        assert {"a=ice-lite", "a=extmap-allow-mixed", "a=msid-semantic:WMS *"} <= set(session)
        assert len([line for line in session if line.startswith("a=group:BUNDLE")]) == 1
        assert [line for line in session if line.startswith("a=fingerprint:sha-256 ")]
        for section in media:
            assert not [line for line in section if line.startswith("a=fingerprint")]
            assert sdp_shape.port_of(section) == 9
            assert "c=IN IP4 0.0.0.0" in section
            if setup is not None:
                assert setup in section


async def test_subscriber_offer_lists_rtx_red_fec_and_red_for_opus(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, _ = await _publish(http, pcs)
    puller = await _puller(http, pcs)
    offer = (await _pull(http, puller, publisher, "mic", "cam"))["sessionDescription"]["sdp"]
    audio, video = sdp_shape.split(offer)[1]
    names = [p.codec.name.lower() for p in sdp_shape.payloads(video)]
    assert names[:2] == ["vp8", "rtx"]
    assert {"red", "ulpfec"} <= set(names)
    listed = sdp_shape.payloads(video)
    for payload in listed:
        if payload.codec.name.lower() in ("vp8", "h264", "red"):
            assert any(p.codec.is_rtx and p.codec.apt == payload.pt for p in listed)
    assert any(line.startswith("a=ssrc-group:FID ") for line in video)
    [opus, red] = sdp_shape.payloads(audio)
    assert (opus.codec.name, red.codec.rtpmap) == ("opus", "red/48000/2")
    assert red.codec.fmtp == f"{opus.pt}/{opus.pt}"
    # The puller's aiortc takes VP8 among them and media flows.
    await _answer(http, puller, offer)
    frame = await asyncio.wait_for(_first_frame(puller, "video"), WAIT_S)
    assert frame.width == 640


async def test_high_profile_publisher_is_offered_first_in_its_own_profile(
    sfu: LocalSfu, sfu_app: Any, http: httpx.AsyncClient
) -> None:
    async with RealtimeClient(sfu_app.app_id, sfu_app.app_secret, base_url=sfu.base_url) as rt:
        participant = SyntheticParticipant(rt, number=1, role="clinician", codec="H264-high")
        await participant.start()
        try:
            puller_id = await new_session(http)
            response = await http.post(
                f"/sessions/{puller_id}/tracks/new",
                json=_pull_body(participant.session_id, "video"),
            )
            offer = response.json()["sessionDescription"]["sdp"]
        finally:
            await participant.stop()
    [video] = sdp_shape.split(offer)[1]
    first = sdp_shape.payloads(video)[0]
    assert first.codec.name == "H264"
    assert "profile-level-id=640c1f" in first.codec.fmtp


# -- RTX ------------------------------------------------------------------------------


async def test_nacked_packets_come_back_over_rtx_on_its_own_ssrc(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, _ = await _publish(http, pcs, ("cam",))
    puller = await _puller(http, pcs)
    offer = (await _pull(http, puller, publisher, "cam"))["sessionDescription"]["sdp"]
    [video] = sdp_shape.split(offer)[1]
    fid = next(line for line in video if line.startswith("a=ssrc-group:FID "))
    media_ssrc, rtx_ssrc = (int(x) for x in fid.split()[1:3])
    vp8 = sdp_shape.payloads(video)[0]
    rtx_pt = next(p.pt for p in sdp_shape.payloads(video) if p.codec.apt == vp8.pt)
    media: list[RtpPacket] = []
    retransmitted: asyncio.Future[RtpPacket] = asyncio.get_running_loop().create_future()
    got_media = asyncio.Event()

    def watch(pc: RTCPeerConnection) -> None:
        receiver: Any = pc.getTransceivers()[0].receiver
        original = receiver._handle_rtp_packet

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            if packet.ssrc == rtx_ssrc and not retransmitted.done():
                retransmitted.set_result(packet)
            elif packet.ssrc == media_ssrc:
                media.append(packet)
                got_media.set()
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle

    await _answer(http, puller, offer, before_answer=watch)
    await asyncio.wait_for(got_media.wait(), WAIT_S)
    lost = media[0]
    receiver: Any = puller.pc.getTransceivers()[0].receiver
    await receiver._send_rtcp_nack(media_ssrc, [lost.sequence_number])
    rtx = await asyncio.wait_for(retransmitted, WAIT_S)
    assert rtx.payload_type == rtx_pt
    assert int.from_bytes(rtx.payload[:2], "big") == lost.sequence_number
    assert rtx.payload[2:] == lost.payload
    assert rtx.timestamp == lost.timestamp


# -- declined m-lines ---------------------------------------------------------------


async def test_declined_or_codecless_m_lines_send_nothing_and_renegotiation_succeeds(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, _ = await _publish(http, pcs, ("mic", "cam", "cam2"))
    puller = await _puller(http, pcs)
    pulled = await _pull(http, puller, publisher, "mic", "cam", "cam2")
    offer = pulled["sessionDescription"]["sdp"]
    mids = {t["trackName"]: t["mid"] for t in pulled["tracks"]}
    vp8 = sdp_shape.payloads(sdp_shape.find_section(offer, mids["cam2"]) or [])[0].pt

    def decline_cam(pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.mid == mids["cam"]:
                transceiver.direction = "inactive"

    def drop_vp8_from_cam2(sdp: str) -> str:
        session, media = sdp_shape.split(sdp)
        edited = [
            sdp_shape.set_payloads(s, [p for p in sdp_shape.payloads(s) if p.pt != vp8])
            if sdp_shape.mid_of(s) == mids["cam2"]
            else s
            for s in media
        ]
        return sdp_shape.join(session, edited)

    await _answer(http, puller, offer, edit=drop_vp8_from_cam2, before_answer=decline_cam)
    assert await asyncio.wait_for(_first_frame(puller, "audio"), WAIT_S) is not None
    state = (await http.get(f"/sessions/{puller.session_id}")).json()
    status = {t["trackName"]: t["status"] for t in state["tracks"]}
    assert status == {"mic": "active", "cam": "inactive", "cam2": "inactive"}


# -- m-line reuse, status, result order ----------------------------------------------


async def test_closed_m_line_is_inactive_then_reused_by_a_later_pull(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, _ = await _publish(http, pcs, ("mic", "mic2", "cam"))
    puller = await _puller(http, pcs)
    first = await _pull(http, puller, publisher, "mic")
    await _answer(http, puller, first["sessionDescription"]["sdp"])
    mid = first["tracks"][0]["mid"]
    closed = await http.put(
        f"/sessions/{puller.session_id}/tracks/close",
        json={"tracks": [{"mid": mid}], "force": True},
    )
    assert closed.status_code == 200 and "sessionDescription" not in closed.json()
    # A video pull cannot reuse the audio m-line: the next offer shows it inactive.
    video = await _pull(http, puller, publisher, "cam")
    assert "a=inactive" in (sdp_shape.find_section(video["sessionDescription"]["sdp"], mid) or [])
    await _answer(http, puller, video["sessionDescription"]["sdp"])
    # An audio pull reuses it: same mid, sending again, no new m-line.
    again = await _pull(http, puller, publisher, "mic2")
    offer = again["sessionDescription"]["sdp"]
    assert again["tracks"][0]["mid"] == mid
    assert len(sdp_shape.split(offer)[1]) == 2
    assert "a=sendonly" in (sdp_shape.find_section(offer, mid) or [])
    state = (await http.get(f"/sessions/{puller.session_id}")).json()
    assert {t["trackName"]: t["status"] for t in state["tracks"]}["mic2"] == "initializing"
    await _answer(http, puller, offer)


async def test_pulled_track_is_initializing_until_answered_and_forwarding(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, _ = await _publish(http, pcs, ("mic",))
    puller = await _puller(http, pcs)
    pulled = await _pull(http, puller, publisher, "mic")
    state = (await http.get(f"/sessions/{puller.session_id}")).json()
    assert [t["status"] for t in state["tracks"]] == ["initializing"]
    await _answer(http, puller, pulled["sessionDescription"]["sdp"])
    await asyncio.wait_for(_first_frame(puller, "audio"), WAIT_S)
    state = (await http.get(f"/sessions/{puller.session_id}")).json()
    assert [t["status"] for t in state["tracks"]] == ["active"]


async def test_failed_pulls_come_last_beside_an_offer_for_the_rest(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher, _ = await _publish(http, pcs, ("mic",))
    puller = await _puller(http, pcs)
    pulled = await _pull(http, puller, publisher, "nobody", "mic")
    assert [t["trackName"] for t in pulled["tracks"]] == ["mic", "nobody"]
    assert pulled["tracks"][0]["mid"] != "" and "errorCode" not in pulled["tracks"][0]
    assert pulled["tracks"][1]["mid"] == ""
    assert pulled["tracks"][1]["errorCode"] == "not_found_track_error"
    assert pulled["requiresImmediateRenegotiation"] is True
    assert re.search(r"^m=audio ", pulled["sessionDescription"]["sdp"], re.MULTILINE)
