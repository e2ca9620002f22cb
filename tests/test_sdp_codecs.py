"""A track in a codec the recorder cannot decode is declined, not fatal to the pull."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from bot.sdp_codecs import accept_undecodable, decline


async def _offer(kinds: list[str]) -> str:
    """A real offer (aiortc, sendonly, one codec per section), as an SFU would send."""
    pc = RTCPeerConnection()
    for kind in kinds:
        transceiver = pc.addTransceiver(kind, direction="sendonly")
        codec = ("video/VP8", 90000, None) if kind == "video" else ("audio/opus", 48000, 2)
        transceiver.setCodecPreferences(
            [RTCRtpCodecCapability(mimeType=codec[0], clockRate=codec[1], channels=codec[2])]
        )
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _section(sdp: str, mid: str) -> list[str]:
    sections = sdp.split("\r\nm=")
    return next(s for s in sections if f"a=mid:{mid}\r\n" in s + "\r\n").split("\r\n")


async def test_a_vp9_section_is_declined_and_the_others_are_answered() -> None:
    offer = await _offer(["audio", "video", "audio", "video"])
    sections = offer.split("\r\nm=")
    sections[4] = sections[4].replace("VP8/90000", "VP9/90000")  # mid 3: the patient's video
    offer = "\r\nm=".join(sections)

    acceptable, declined = accept_undecodable(offer)
    assert [(d.mid, d.codec) for d in declined] == [("3", "VP9")]
    pc = RTCPeerConnection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(acceptable, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = decline(pc.localDescription.sdp, declined)
    finally:
        await pc.close()

    refused = _section(answer, "3")
    assert "a=inactive" in refused and not {"a=recvonly", "a=sendrecv"} & set(refused)
    assert any(line.endswith(" VP9/90000") for line in refused)
    assert not any("VP8" in line for line in refused)
    for mid in ("0", "1", "2"):
        assert "a=recvonly" in _section(answer, mid)
    assert answer.count("\r\nm=") == offer.count("\r\nm=")


async def test_an_offer_aiortc_can_decode_is_left_alone() -> None:
    offer = await _offer(["audio", "video"])
    acceptable, declined = accept_undecodable(offer)
    assert declined == [] and acceptable == offer
    assert decline(acceptable, []) == offer
