"""What the recorder accepts from an SFU's offer, and how its answer says so.

Cloudflare offers a subscriber several payload types per m-line: the forwarded codec first,
RTX for every video codec, RED and ULPFEC, and H.264 in every profile and packetization
mode the publisher offered. aiortc matches H.264 only as (constrained) baseline in
packetization mode 1, and refuses a whole remote description when one m-section has no
codec it knows, which would lose every track of that pull. Yet PyAV decodes every H.264
profile a browser sends, and aiortc's depacketizer reads single NAL units (mode 0) as well
as FU-A and STAP-A (mode 1). So before aiortc sees an offer (``prepare_offer``):

- each decodable H.264 payload type is shown to aiortc in the one form it matches, and the
  answer gets the offered ``a=fmtp`` back (``OfferPlan.finish``), so the SFU is told
  exactly which payload types, profiles and modes were accepted;
- each m-section with no decodable codec gets a stand-in codec, and is answered
  ``a=inactive`` with its codec lines as offered (declined): the SFU is told the truth,
  the track is reported as not recordable, and the other tracks are recorded.

Payload types that carry no media of their own (RTX, RED, ULPFEC) are left for aiortc,
which answers RTX for the codecs it accepted and leaves the rest out.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

DECODABLE = {"audio": {"opus", "pcmu", "pcma"}, "video": {"vp8", "h264"}}
"""What the recorder decodes, by kind, lower-case encoding names."""
H264_PROFILES = {
    0x42: "Baseline",
    0x4D: "Main",
    0x64: "High",
    0x6E: "High 10",
    0x7A: "High 4:2:2",
    0xF4: "High 4:4:4",
}
"""H.264 profile_idc values FFmpeg's decoder (inside PyAV) decodes in full. Extended (0x58,
data partitioning) and the scalable and multiview profiles are not among them."""
H264_MODES = {0, 1}
"""Packetization modes aiortc's depacketizer reads (mode 2 needs STAP-B/MTAP/FU-B)."""
_H264_AS_AIORTC_MATCHES = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
_HELPERS = {"rtx", "red", "ulpfec", "flexfec-03", "telephone-event", "cn"}
"""Payloads that carry no media of their own (retransmission, redundancy, DTMF, noise)."""
_STAND_IN = {"audio": "opus/48000/2", "video": "VP8/90000"}
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)", re.IGNORECASE)
_FMTP = re.compile(r"^a=fmtp:(\d+) (.*)$")
_CODEC_LINE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)")
_DIRECTION = {"a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"}
_SENDS = {"a=sendrecv", "a=sendonly"}


@dataclass(frozen=True)
class Declined:
    """An offered m-section the recorder cannot decode: its mid, codec and codec lines."""

    mid: str
    codec: str
    codec_lines: tuple[str, ...]
    code: str = "codec_not_supported"
    """``codec_not_supported``, or ``offer_refused`` when declined because the WebRTC stack
    refused the offer as it was."""

    @property
    def reason(self) -> str:
        if self.code == "offer_refused":
            return "the recorder's WebRTC stack refused the SFU's offer; the track was declined"
        known = ", ".join(sorted(name for names in DECODABLE.values() for name in names))
        return (
            f"the recorder cannot decode {self.codec} (it decodes {known}, H.264 in the "
            f"{', '.join(H264_PROFILES.values())} profiles, packetization mode 0 or 1); "
            "have the app publish VP8 or H.264"
        )


@dataclass(frozen=True)
class OfferPlan:
    """An SFU offer made acceptable to aiortc, and how to turn aiortc's answer back."""

    sdp: str
    """What aiortc is given."""
    declined: tuple[Declined, ...]
    """Every m-section of the offer that is answered inactive (earlier ones included)."""
    sending: frozenset[str] = frozenset()
    """Mids of the audio and video sections the SFU will send on (not inactive)."""
    offered_fmtp: dict[tuple[str, int], str] = field(default_factory=dict)
    """``(mid, payload type)`` -> the ``a=fmtp`` line as offered, for every H.264 payload
    type shown to aiortc in another form."""

    def finish(self, answer: str) -> str:
        """aiortc's answer with the offered H.264 fmtp lines back and declined sections
        inactive with their codec lines as offered."""
        by_mid = {d.mid: d for d in self.declined}
        parts = _split(answer)
        for section in parts[1:]:
            mid = _mid(section) or ""
            item = by_mid.get(mid)
            if item is not None:
                kept = [
                    line
                    for line in section
                    if not _CODEC_LINE.match(line) and line not in _DIRECTION
                ]
                section[:] = [*kept, "a=inactive", *item.codec_lines]
                continue
            for index, line in enumerate(section):
                if (m := _FMTP.match(line)) and (mid, int(m.group(1))) in self.offered_fmtp:
                    section[index] = self.offered_fmtp[(mid, int(m.group(1)))]
        return _join(parts)


def prepare_offer(offer: str, *, decline: Collection[str] = ()) -> OfferPlan:
    """The offer as aiortc can take it (see the module docstring).

    The sections whose mid is in ``decline`` are declined whatever their codec: the last
    resort when aiortc refuses an offer for a reason of its own, so that the SFU still
    gets an answer and is never left with a pending offer.
    """
    parts = _split(offer)
    declined: list[Declined] = []
    offered_fmtp: dict[tuple[str, int], str] = {}
    sending: set[str] = set()
    for section in parts[1:]:
        kind = section[0][2:].split(" ", 1)[0]
        mid = _mid(section)
        if kind not in DECODABLE or mid is None:
            continue
        port = section[0].split(" ")[1]
        if port != "0" and (_SENDS & set(section) or not _DIRECTION & set(section)):
            sending.add(mid)
        codecs = _codecs(section)
        media = [(pt, name) for pt, name in codecs.items() if name.lower() not in _HELPERS]
        accepted = [(pt, name) for pt, name in media if _decodable(kind, name, section, pt)]
        if accepted and mid not in decline:
            for pt, name in accepted:
                fmtp = _fmtp_line(section, pt)
                if name.lower() == "h264" and fmtp != f"a=fmtp:{pt} {_H264_AS_AIORTC_MATCHES}":
                    offered_fmtp[(mid, pt)] = fmtp or f"a=fmtp:{pt} {_H264_AS_AIORTC_MATCHES}"
                    _set_fmtp(section, pt, _H264_AS_AIORTC_MATCHES)
            continue
        codec = _describe(kind, media, section) if media else "no media codec"
        codec_lines = tuple(line for line in section if _CODEC_LINE.match(line))
        code = "codec_not_supported" if not accepted else "offer_refused"
        declined.append(Declined(mid, codec, codec_lines, code))
        kept = [line for line in section if not _CODEC_LINE.match(line)]
        payload_types = section[0].split(" ")[3:]
        kept += [f"a=rtpmap:{pt} {_STAND_IN[kind]}" for pt in payload_types]
        section[:] = kept
    return OfferPlan(_join(parts), tuple(declined), frozenset(sending), offered_fmtp)


def h264_profile(fmtp: str | None) -> tuple[int, int]:
    """``(profile_idc, packetization mode)`` of an H.264 fmtp value (RFC 6184 defaults:
    constrained baseline when profile-level-id is absent, mode 0 when the mode is)."""
    params = dict(
        item.split("=", 1) for item in (fmtp or "").replace(" ", "").split(";") if "=" in item
    )
    level_id = params.get("profile-level-id", "42e01f")
    try:
        profile_idc = int(level_id[:2], 16)
        mode = int(params.get("packetization-mode", "0"))
    except ValueError:
        return -1, -1
    return profile_idc, mode


def _decodable(kind: str, name: str, section: list[str], pt: int) -> bool:
    if name.lower() not in DECODABLE[kind]:
        return False
    if name.lower() != "h264":
        return True
    fmtp = _fmtp_line(section, pt)
    profile_idc, mode = h264_profile(fmtp.split(" ", 1)[1] if fmtp else None)
    return profile_idc in H264_PROFILES and mode in H264_MODES


def _describe(kind: str, media: list[tuple[int, str]], section: list[str]) -> str:
    """The first offered media codec, named as a person would look it up."""
    pt, name = media[0]
    if name.lower() != "h264":
        return name
    fmtp = _fmtp_line(section, pt)
    profile_idc, mode = h264_profile(fmtp.split(" ", 1)[1] if fmtp else None)
    return f"H.264 (profile_idc 0x{profile_idc & 0xFF:02x}, packetization-mode {mode})"


def _codecs(section: list[str]) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for line in section if (m := _RTPMAP.match(line))}


def _fmtp_line(section: list[str], pt: int) -> str | None:
    return next((line for line in section if line.startswith(f"a=fmtp:{pt} ")), None)


def _set_fmtp(section: list[str], pt: int, value: str) -> None:
    line = f"a=fmtp:{pt} {value}"
    for index, existing in enumerate(section):
        if existing.startswith(f"a=fmtp:{pt} "):
            section[index] = line
            return
    rtpmap = next(i for i, existing in enumerate(section) if existing.startswith(f"a=rtpmap:{pt} "))
    section.insert(rtpmap + 1, line)


def _split(sdp: str) -> list[list[str]]:
    """The session part, then one list of lines per m-section."""
    parts: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts.append([])
        parts[-1].append(line)
    return parts


def _join(parts: list[list[str]]) -> str:
    return "".join(f"{line}\r\n" for part in parts for line in part)


def _mid(section: list[str]) -> str | None:
    return next((line[6:] for line in section if line.startswith("a=mid:")), None)
