"""Offers shaped like the ones Cloudflare's SFU sends a subscriber, for recorder tests.

Shape from the observed SDP in ``shared/docs/cloudflare-realtime.md``: session-level
``a=fingerprint``, ``a=ice-lite``, ``a=extmap-allow-mixed``, ``a=msid-semantic``, one BUNDLE
group; per m-line ``a=setup:actpass``, port 9, ``c=IN IP4 0.0.0.0``, several payload types
(the forwarded codec first, RTX on its own SSRC with ``a=ssrc-group:FID``, RED, ULPFEC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FINGERPRINT = ":".join(f"{i:02X}" for i in range(32))


@dataclass(frozen=True)
class Codec:
    """One payload type of an m-line: ``rtpmap`` name/rate(/channels), optional fmtp."""

    pt: int
    name: str
    fmtp: str | None = None


def h264(pt: int, profile: str, mode: int = 1) -> Codec:
    return Codec(
        pt,
        "H264/90000",
        f"level-asymmetry-allowed=1;packetization-mode={mode};profile-level-id={profile}",
    )


def rtx(pt: int, apt: int) -> Codec:
    return Codec(pt, "rtx/90000", f"apt={apt}")


OPUS_WITH_RED = (
    Codec(111, "opus/48000/2", "minptime=10;useinbandfec=1"),
    Codec(63, "red/48000/2", "111/111"),
)
VP8_WITH_HELPERS = (
    Codec(96, "VP8/90000"),
    rtx(97, 96),
    Codec(98, "red/90000"),
    rtx(99, 98),
    Codec(35, "ulpfec/90000"),
)
H264_HIGH_ONLY = (
    h264(125, "640c1f"),
    rtx(107, 125),
    h264(36, "4d001f"),
    rtx(37, 36),
    Codec(98, "red/90000"),
    rtx(99, 98),
    Codec(35, "ulpfec/90000"),
)
"""Seven payload types, as once seen on one video m-line, none constrained baseline."""
H264_EVERY_PROFILE = (
    h264(125, "640c1f"),
    rtx(107, 125),
    h264(108, "42e01f", mode=0),
    rtx(109, 108),
    h264(127, "42001f"),
    rtx(121, 127),
    h264(36, "4d001f", mode=0),
    rtx(37, 36),
    Codec(98, "red/90000"),
    Codec(35, "ulpfec/90000"),
)
VP9_ONLY = (Codec(98, "VP9/90000", "profile-id=0"), rtx(99, 98))


@dataclass(frozen=True)
class Section:
    kind: str
    mid: str
    codecs: Sequence[Codec]
    ssrc: int
    direction: str = "sendonly"


def offer(sections: Sequence[Section], *, ssrc_lines: bool = True) -> str:
    """A Cloudflare-shaped subscriber offer (one host candidate on 127.0.0.1)."""
    lines = [
        "v=0",
        "o=- 4215775240449105457 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=fingerprint:sha-256 {FINGERPRINT}",
        "a=ice-lite",
        "a=extmap-allow-mixed",
        "a=msid-semantic:WMS *",
        "a=group:BUNDLE " + " ".join(s.mid for s in sections),
    ]
    for s in sections:
        lines += [
            f"m={s.kind} 9 UDP/TLS/RTP/SAVPF " + " ".join(str(c.pt) for c in s.codecs),
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            "a=ice-ufrag:cfufrag1",
            "a=ice-pwd:cfpassword0123456789abcd",
            "a=setup:actpass",
            f"a=mid:{s.mid}",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            f"a={s.direction}",
            f"a=msid:stream-{s.mid} track-{s.mid}",
            "a=rtcp-mux",
            "a=rtcp-rsize",
        ]
        for c in s.codecs:
            lines.append(f"a=rtpmap:{c.pt} {c.name}")
            if s.kind == "video" and not c.name.lower().startswith(("rtx", "red", "ulpfec")):
                lines += [f"a=rtcp-fb:{c.pt} nack", f"a=rtcp-fb:{c.pt} nack pli"]
            if c.fmtp:
                lines.append(f"a=fmtp:{c.pt} {c.fmtp}")
        if ssrc_lines:
            has_rtx = any(c.name.lower().startswith("rtx") for c in s.codecs)
            if has_rtx:
                lines.append(f"a=ssrc-group:FID {s.ssrc} {s.ssrc + 1}")
            lines.append(f"a=ssrc:{s.ssrc} cname:cf-{s.mid}")
            if has_rtx:
                lines.append(f"a=ssrc:{s.ssrc + 1} cname:cf-{s.mid}")
        lines.append("a=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host")
        lines.append("a=end-of-candidates")
    return "".join(f"{line}\r\n" for line in lines)
