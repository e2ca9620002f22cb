"""The SFU's SDP rewriting (``testbed.sfu.sdp_shape``), on text alone."""

from __future__ import annotations

from aiortc import sdp as aiortc_sdp
from testbed.sfu import sdp_shape
from testbed.sfu.sdp_shape import Codec, Payload, PayloadTypes

FINGERPRINT = "a=fingerprint:sha-256 AA:BB"
AIORTC_OFFER = (
    "\r\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "a=msid-semantic:WMS *",
            "m=audio 50000 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 192.0.2.2",
            "a=sendonly",
            "a=mid:0",
            "a=rtcp-mux",
            "a=rtpmap:96 opus/48000/2",
            "a=candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host",
            "a=end-of-candidates",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            FINGERPRINT,
            "a=fingerprint:sha-512 CC:DD",
            "a=setup:active",
            "m=video 50000 UDP/TLS/RTP/SAVPF 97 98",
            "c=IN IP4 192.0.2.2",
            "a=sendonly",
            "a=mid:1",
            "a=rtcp-mux",
            "a=ssrc-group:FID 1 2",
            "a=rtpmap:97 VP8/90000",
            "a=rtcp-fb:97 nack",
            "a=rtpmap:98 rtx/90000",
            "a=fmtp:98 apt=97",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            FINGERPRINT,
            "a=setup:active",
        ]
    )
    + "\r\n"
)
HIGH = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f"


def test_shape_moves_fingerprint_to_session_level_and_adds_cloudflare_attributes() -> None:
    shaped = sdp_shape.shape(AIORTC_OFFER, offer=True)
    session, media = sdp_shape.split(shaped)
    assert session[4:] == [
        "a=group:BUNDLE 0 1",
        "a=ice-lite",
        "a=extmap-allow-mixed",
        "a=msid-semantic:WMS *",
        FINGERPRINT,
    ]
    for section in media:
        assert sdp_shape.port_of(section) == 9
        assert "c=IN IP4 0.0.0.0" in section
        assert [line for line in section if line.startswith("a=setup")] == ["a=setup:actpass"]
        assert not [line for line in section if line.startswith("a=fingerprint")]
    # aiortc reads it back: session-level fingerprint and ICE-lite reach every m-line.
    parsed = aiortc_sdp.SessionDescription.parse(shaped)
    assert all(m.ice.iceLite and m.dtls.fingerprints for m in parsed.media)


def test_shape_keeps_the_dtls_role_of_an_answer() -> None:
    [audio, _] = sdp_shape.split(sdp_shape.shape(AIORTC_OFFER, offer=False))[1]
    assert "a=setup:active" in audio


def test_payloads_read_rtpmap_fmtp_feedback_and_static_types() -> None:
    section = [
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "a=rtcp-fb:* transport-cc",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
    ]
    opus, pcmu = sdp_shape.payloads(section)
    assert opus == Payload(
        111, Codec("opus", 48000, 2, "minptime=10;useinbandfec=1", ("transport-cc",))
    )
    assert (pcmu.pt, pcmu.codec.rtpmap) == (0, "PCMU/8000")


def test_set_payloads_replaces_the_list_in_place() -> None:
    [_, video] = sdp_shape.split(AIORTC_OFFER)[1]
    out = sdp_shape.set_payloads(video, [Payload(100, Codec("H264", 90000, fmtp=HIGH))])
    assert out[0] == "m=video 50000 UDP/TLS/RTP/SAVPF 100"
    assert [line for line in out if line.startswith(("a=rtpmap", "a=fmtp", "a=rtcp-fb"))] == [
        "a=rtpmap:100 H264/90000",
        f"a=fmtp:100 {HIGH}",
    ]
    assert out.index("a=rtpmap:100 H264/90000") > out.index("a=ssrc-group:FID 1 2")
    assert out[-1] == "a=setup:active"


def test_subscriber_payloads_put_the_publisher_codec_first_with_all_its_h264_profiles() -> None:
    offered = [
        Codec("H264", 90000, fmtp=HIGH),
        Codec("H264", 90000, fmtp="packetization-mode=0;profile-level-id=42e01f"),
        Codec("H264", 90000, fmtp="packetization-mode=1;profile-level-id=4d001f"),
        Codec("H264", 90000, fmtp="packetization-mode=1;profile-level-id=42001f"),
        Codec("VP8", 90000),
    ]
    numbers = PayloadTypes()
    planned = sdp_shape.subscriber_payloads("video", offered[0], offered, numbers)
    media = [p for p in planned if not p.codec.is_rtx]
    assert [p.codec.fmtp for p in media[:4]] == [c.fmtp for c in offered[:4]]
    assert [p.codec.name for p in media[4:]] == ["red", "ulpfec"]
    for payload in media:
        rtx = [p for p in planned if p.codec.apt == payload.pt]
        assert len(rtx) == (0 if payload.codec.name == "ulpfec" else 1)
    assert media[0].codec.feedback == sdp_shape.VIDEO_FEEDBACK
    assert len({p.pt for p in planned}) == len(planned) == 11
    # The same configuration keeps its number in the session's next offer.
    again = sdp_shape.subscriber_payloads("video", offered[0], offered[:1], numbers)
    assert again[0] == planned[0]


def test_subscriber_payloads_add_red_for_opus() -> None:
    opus = Codec("opus", 48000, 2, "minptime=10;useinbandfec=1")
    planned = sdp_shape.subscriber_payloads("audio", opus, [opus], PayloadTypes())
    assert [(p.pt, p.codec.rtpmap, p.codec.fmtp) for p in planned] == [
        (111, "opus/48000/2", "minptime=10;useinbandfec=1"),
        (63, "red/48000/2", "111/111"),
    ]


def test_payload_types_avoid_numbers_the_client_uses() -> None:
    numbers = PayloadTypes()
    numbers.reserve([96, 111])
    assert numbers.number(Codec("opus", 48000, 2)) == 97
    assert numbers.number(Codec("PCMU", 8000)) == 0


def test_refused_h264_formats_are_relabelled_for_aiortc_and_the_rest_kept() -> None:
    assert sdp_shape.aiortc_takes_h264("packetization-mode=1;profile-level-id=42e01f")
    assert sdp_shape.aiortc_takes_h264("packetization-mode=1;profile-level-id=42001f")
    assert not sdp_shape.aiortc_takes_h264(HIGH)
    assert not sdp_shape.aiortc_takes_h264("packetization-mode=0;profile-level-id=42e01f")
    offer = AIORTC_OFFER.replace("97 VP8/90000", "97 H264/90000").replace(
        "a=rtcp-fb:97 nack", f"a=rtcp-fb:97 nack\r\na=fmtp:97 {HIGH}"
    )
    [audio, video] = sdp_shape.split(sdp_shape.acceptable_to_aiortc(offer))[1]
    assert sdp_shape.payloads(video)[0].codec.fmtp == sdp_shape.AIORTC_H264_FMTP
    assert sdp_shape.payloads(video)[1].codec.fmtp == "apt=97"
    assert audio == sdp_shape.split(offer)[1][0]
    # The SFU answers with the publisher's own format, found in the original text.
    chosen = sdp_shape.first_forwardable("video", sdp_shape.payloads(sdp_shape.split(offer)[1][1]))
    assert [(p.pt, p.codec.fmtp) for p in chosen] == [(97, HIGH), (98, "apt=97")]


def test_answer_choice_finds_the_forwarded_codec_or_a_decline() -> None:
    offered = [
        Payload(96, Codec("VP8", 90000)),
        Payload(97, Codec("rtx", 90000, fmtp="apt=96")),
        Payload(98, Codec("red", 90000)),
    ]
    head = "m=video 9 UDP/TLS/RTP/SAVPF"
    rtpmaps = ["a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96"]
    accepted = [f"{head} 96 97", "a=recvonly", *rtpmaps]
    assert sdp_shape.answer_choice(accepted, offered) == (96, 97)
    without_rtx = [f"{head} 96", "a=recvonly", rtpmaps[0]]
    assert sdp_shape.answer_choice(without_rtx, offered) == (96, None)
    assert sdp_shape.answer_choice([f"{head} 98", "a=recvonly"], offered) == (None, None)
    assert sdp_shape.answer_choice([f"{head} 96", "a=inactive", rtpmaps[0]], offered) == (
        None,
        None,
    )
    port_zero = ["m=video 0 UDP/TLS/RTP/SAVPF 96", "a=recvonly", rtpmaps[0]]
    assert sdp_shape.answer_choice(port_zero, offered) == (None, None)
    assert sdp_shape.own_choice(sdp_shape.payloads(accepted)) == (96, 97)


def test_answer_for_aiortc_restores_its_own_formats_and_mends_a_declined_m_line() -> None:
    inner = AIORTC_OFFER
    answer = "\r\n".join(
        [
            "v=0",
            "o=- 2 2 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=recvonly",
            "a=mid:0",
            "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2",
            "a=ice-ufrag:wxyz",
            "a=ice-pwd:0123456789012345678901",
            FINGERPRINT,
            "a=setup:active",
            "m=video 0 UDP/TLS/RTP/SAVPF 100",
            "a=mid:1",
            "a=fmtp:100 apt=99",
            "a=rtpmap:100 rtx/90000",
        ]
    )
    mended = sdp_shape.answer_for_aiortc(answer, inner, {"0": True, "1": False})
    session, (audio, video) = sdp_shape.split(mended)
    assert "a=group:BUNDLE 0 1" in session
    assert [p.pt for p in sdp_shape.payloads(audio)] == [96]
    assert [p.pt for p in sdp_shape.payloads(video)] == [97, 98]
    assert sdp_shape.port_of(video) == 9
    assert sdp_shape.direction_of(video) == "inactive"
    assert {"a=ice-ufrag:wxyz", FINGERPRINT, "a=setup:active", "a=rtcp-mux"} <= set(video)
    parsed = aiortc_sdp.SessionDescription.parse(mended)
    assert [m.direction for m in parsed.media] == ["recvonly", "inactive"]
