"""Offers shaped like Cloudflare's: every decodable codec accepted, the rest declined alone.

Each offer goes through the real aiortc (``setRemoteDescription``, ``createAnswer``) after
``prepare_offer``, as in the recorder; the answer is read as the SFU would read it.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from bot.rtc.aiortc_compat import accept_lower_dynamic_payload_types
from bot.rtc.codec_policy import h264_profile, prepare_offer
from tests.cloudflare_sdp import (
    H264_EVERY_PROFILE,
    H264_HIGH_ONLY,
    OPUS_WITH_RED,
    VP8_WITH_HELPERS,
    VP9_ONLY,
    Codec,
    Section,
    h264,
    offer,
    rtx,
)


async def _aiortc_offer(kinds: list[str]) -> str:
    """A real offer (aiortc, sendonly, one codec per section), as the local SFU once sent."""
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


async def _answer(sdp: str) -> str:
    """What the recorder answers: ``prepare_offer``, aiortc, ``OfferPlan.finish``."""
    accept_lower_dynamic_payload_types()
    plan = prepare_offer(sdp)
    pc = RTCPeerConnection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(plan.sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return plan.finish(pc.localDescription.sdp)
    finally:
        await pc.close()


def _section(sdp: str, mid: str) -> list[str]:
    sections = sdp.split("\r\nm=")
    return next(s for s in sections if f"a=mid:{mid}\r\n" in s + "\r\n").split("\r\n")


def _payload_types(section: list[str]) -> list[int]:
    return [int(pt) for pt in section[0].split(" ")[3:]]


def _fmtp(section: list[str], pt: int) -> str | None:
    return next(
        (line.split(" ", 1)[1] for line in section if line.startswith(f"a=fmtp:{pt} ")), None
    )


def _cloudflare(video: tuple[Codec, ...], *, ssrc_lines: bool = True) -> str:
    return offer(
        [Section("audio", "0", OPUS_WITH_RED, 1000), Section("video", "1", video, 2000)],
        ssrc_lines=ssrc_lines,
    )


async def test_h264_high_profile_alone_is_accepted_with_its_rtx_and_the_offered_fmtp() -> None:
    # Before: aiortc raised OperationError for the whole offer ("Failed to set remote
    # video description send parameters") and the recorder exited 1, losing every track.
    answer = await _answer(_cloudflare(H264_HIGH_ONLY))
    video = _section(answer, "1")
    assert "a=recvonly" in video
    assert _payload_types(video)[:2] == [125, 107]
    assert h264_profile(_fmtp(video, 125)) == (0x64, 1)
    assert _fmtp(video, 107) == "apt=125"
    # Main profile on 36, below 96: answered on 36 with its RTX on 37, not renumbered.
    assert 36 in _payload_types(video) and _fmtp(video, 37) == "apt=36"
    assert h264_profile(_fmtp(video, 36)) == (0x4D, 1)
    assert not any(name in answer.lower() for name in ("red/", "ulpfec"))


async def test_every_offered_h264_profile_and_mode_is_answered_the_forwarded_one_first() -> None:
    # Before: aiortc answered only 42001f (payload 127); the forwarded High profile on 125
    # was left out, so every packet the SFU sent was dropped as an unknown payload type.
    video = _section(await _answer(_cloudflare(H264_EVERY_PROFILE)), "1")
    assert _payload_types(video)[0] == 125
    offered = {c.pt: c.fmtp for c in H264_EVERY_PROFILE if c.name.startswith("H264")}
    for pt, fmtp in offered.items():
        assert _fmtp(video, pt) == fmtp, pt
    assert h264_profile(_fmtp(video, 108)) == (0x42, 0)


async def test_vp8_with_rtx_red_and_fec_keeps_vp8_and_its_rtx_only() -> None:
    answer = await _answer(_cloudflare(VP8_WITH_HELPERS))
    assert _payload_types(_section(answer, "1")) == [96, 97]
    assert _payload_types(_section(answer, "0")) == [111]


async def test_without_ssrc_lines_the_offer_is_still_answered() -> None:
    answer = await _answer(_cloudflare(H264_HIGH_ONLY, ssrc_lines=False))
    assert _payload_types(_section(answer, "1"))[:2] == [125, 107]


async def test_undecodable_sections_are_declined_alone_with_a_reason() -> None:
    extended = (h264(100, "58001f"), rtx(101, 100))  # Extended profile: not decoded in full
    interleaved = (h264(102, "42e01f", mode=2),)  # packetization-mode 2: not depacketized
    sdp = offer(
        [
            Section("audio", "0", OPUS_WITH_RED, 1000),
            Section("video", "1", VP9_ONLY, 2000),
            Section("video", "2", extended, 3000),
            Section("video", "3", interleaved, 4000),
            Section("video", "4", VP8_WITH_HELPERS, 5000),
        ]
    )
    plan = prepare_offer(sdp)
    assert [(d.mid, d.code) for d in plan.declined] == [
        ("1", "codec_not_supported"),
        ("2", "codec_not_supported"),
        ("3", "codec_not_supported"),
    ]
    assert "VP9" in plan.declined[0].reason and "publish VP8 or H.264" in plan.declined[0].reason
    assert "0x58" in plan.declined[1].codec and "packetization-mode 2" in plan.declined[2].codec
    answer = await _answer(sdp)
    for mid, pt in (("1", 98), ("2", 100), ("3", 102)):
        refused = _section(answer, mid)
        assert "a=inactive" in refused and not {"a=recvonly", "a=sendrecv"} & set(refused)
        assert _payload_types(refused)[0] == pt
    assert "a=recvonly" in _section(answer, "4") and "a=recvonly" in _section(answer, "0")


async def test_a_vp9_section_in_an_aiortc_offer_is_declined_and_the_others_answered() -> None:
    sdp = await _aiortc_offer(["audio", "video", "audio", "video"])
    sections = sdp.split("\r\nm=")
    sections[4] = sections[4].replace("VP8/90000", "VP9/90000")  # mid 3: the patient's video
    sdp = "\r\nm=".join(sections)
    assert [(d.mid, d.codec) for d in prepare_offer(sdp).declined] == [("3", "VP9")]
    answer = await _answer(sdp)
    refused = _section(answer, "3")
    assert "a=inactive" in refused and any(line.endswith(" VP9/90000") for line in refused)
    assert not any("VP8" in line for line in refused)
    for mid in ("0", "1", "2"):
        assert "a=recvonly" in _section(answer, mid)
    assert answer.count("\r\nm=") == sdp.count("\r\nm=")


async def test_an_offer_aiortc_decodes_as_it_is_is_left_alone() -> None:
    sdp = await _aiortc_offer(["audio", "video"])
    plan = prepare_offer(sdp)
    assert plan.declined == () and plan.sdp == sdp and plan.sending == {"0", "1"}
    assert plan.finish(sdp) == sdp


def test_declining_on_demand_and_inactive_sections_are_not_sending() -> None:
    sdp = offer(
        [
            Section("audio", "0", OPUS_WITH_RED, 1000),
            Section("video", "1", VP8_WITH_HELPERS, 2000, direction="inactive"),
        ]
    )
    plan = prepare_offer(sdp, decline={"0"})
    assert plan.sending == {"0"}
    assert [(d.mid, d.code) for d in plan.declined] == [("0", "offer_refused")]
    assert "refused the SFU's offer" in plan.declined[0].reason
