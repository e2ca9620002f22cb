"""SDP text as Cloudflare's SFU writes it, translated to and from the SFU's aiortc.

The SFU's aiortc PeerConnection knows a small codec table and writes SDP its own way;
Cloudflare's SFU writes differently, in ways a client can trip over. These pure functions
translate in both directions:

- outgoing (``shape``): session-level ``a=fingerprint``, ``a=ice-lite``,
  ``a=extmap-allow-mixed``, ``a=msid-semantic:WMS *`` and one BUNDLE group; port 9,
  ``c=IN IP4 0.0.0.0`` and ``a=setup:actpass`` on every m-line of an offer (observed in
  Cloudflare's offers; the same session level on answers is assumed);
- an offer to a subscriber lists several payload types per m-line
  (``subscriber_payloads``, ``set_payloads``): observed, up to seven on one video m-line;
- incoming: what aiortc would refuse is rewritten before aiortc sees it
  (``acceptable_to_aiortc`` for a publisher's H.264 profiles, ``answer_for_aiortc`` for a
  subscriber's answer to a multi-codec offer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters
from aiortc.sdp import (
    H264Profile,
    parameters_from_sdp,
    parameters_to_sdp,
    parse_h264_profile_level_id,
)

Section = list[str]
"""One media section: its ``m=`` line and the lines after it, without line endings."""

AIORTC_H264_FMTP = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
"""An H.264 format aiortc's codec matching accepts (constrained baseline, mode 1)."""
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir")
"""What the SFU honours from a subscriber: retransmission requests and keyframe requests.
(Assumed: Cloudflare's offers also carry transport-cc and goog-remb, which this SFU would
not act on, so it does not offer them.)"""
_STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000)}
_DYNAMIC: tuple[int, ...] = (*range(96, 128), *range(35, 64))
_PREFERRED: dict[str, int] = {"opus": 111, "red/48000": 63}
"""Numbers Chrome and Cloudflare's examples use (RED for Opus is ``111/111``)."""
_TRANSPORT = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_SESSION_OWN = (
    "a=fingerprint:",
    "a=ice-lite",
    "a=extmap-allow-mixed",
    "a=msid-semantic:",
    "a=group:BUNDLE",
)
"""Session attributes ``shape`` writes itself."""


@dataclass(frozen=True)
class Codec:
    """One payload format as SDP describes it (rtpmap, fmtp, rtcp-fb), without its number."""

    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str = ""
    feedback: tuple[str, ...] = ()

    @property
    def rtpmap(self) -> str:
        channels = f"/{self.channels}" if self.channels else ""
        return f"{self.name}/{self.clock_rate}{channels}"

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"

    @property
    def apt(self) -> int | None:
        value = fmtp_params(self.fmtp).get("apt")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two formats the same configuration (one payload type in a BUNDLE)."""
        name = self.name.lower()
        params = fmtp_params(self.fmtp)
        if name == "h264":
            # RFC 6184: absent parameters mean constrained baseline... level 1, mode 0.
            return (
                name,
                params.get("profile-level-id", "42000a").lower(),
                params.get("packetization-mode", "0"),
            )
        normalized = ";".join(sorted(p.strip() for p in self.fmtp.split(";") if p.strip()))
        return (name, str(self.clock_rate), str(self.channels or ""), normalized)


@dataclass(frozen=True)
class Payload:
    pt: int
    codec: Codec


def fmtp_params(fmtp: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in fmtp.split(";"):
        name, _, value = item.strip().partition("=")
        if name:
            params[name.lower()] = value
    return params


# -- sections --------------------------------------------------------------------------


def split(sdp: str) -> tuple[list[str], list[Section]]:
    """Session lines and media sections."""
    session: list[str] = []
    media: list[Section] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def join(session: Sequence[str], media: Iterable[Section]) -> str:
    lines = [*session]
    for section in media:
        lines.extend(section)
    return "\r\n".join(lines) + "\r\n"


def mid_of(section: Section) -> str | None:
    return next((line[6:] for line in section if line.startswith("a=mid:")), None)


def kind_of(section: Section) -> str:
    return section[0][2:].split(" ", 1)[0]


def port_of(section: Section) -> int:
    return int(section[0].split(" ")[1])


def direction_of(section: Section) -> str:
    for line in section:
        if line[2:] in _DIRECTIONS:
            return line[2:]
    return "sendrecv"


def find_section(sdp: str, mid: str) -> Section | None:
    return next((s for s in split(sdp)[1] if mid_of(s) == mid), None)


def payloads(section: Section) -> list[Payload]:
    """The section's payload formats in the order of its ``m=`` line."""
    order = [int(pt) for pt in section[0].split(" ")[3:] if pt.isdigit()]
    rtpmaps: dict[int, str] = {}
    fmtps: dict[int, str] = {}
    feedback: dict[int, list[str]] = {}
    wildcard: list[str] = []
    for line in section:
        attr, _, value = line[2:].partition(":")
        pt_text, _, rest = value.partition(" ")
        if attr == "rtcp-fb" and pt_text == "*":
            wildcard.append(rest)
        if not pt_text.isdigit():
            continue
        if attr == "rtpmap":
            rtpmaps[int(pt_text)] = rest
        elif attr == "fmtp":
            fmtps[int(pt_text)] = rest
        elif attr == "rtcp-fb":
            feedback.setdefault(int(pt_text), []).append(rest)
    found: list[Payload] = []
    for pt in order:
        rtpmap = rtpmaps.get(pt)
        if rtpmap is None and pt in _STATIC:
            name, rate = _STATIC[pt]
            rtpmap = f"{name}/{rate}"
        if rtpmap is None:
            continue
        bits = rtpmap.split("/")
        if len(bits) < 2 or not bits[1].isdigit():
            continue
        channels = int(bits[2]) if len(bits) > 2 and bits[2].isdigit() else None
        codec = Codec(
            bits[0],
            int(bits[1]),
            channels,
            fmtps.get(pt, ""),
            tuple([*wildcard, *feedback.get(pt, [])]),
        )
        found.append(Payload(pt, codec))
    return found


def set_payloads(section: Section, chosen: Sequence[Payload]) -> Section:
    """The section listing exactly ``chosen``, in that order, and nothing else."""
    head = section[0].split(" ")[:3]
    kept: Section = [" ".join([*head, *(str(p.pt) for p in chosen)])]
    insert_at: int | None = None
    for line in section[1:]:
        if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            insert_at = len(kept) if insert_at is None else insert_at
            continue
        kept.append(line)
    if insert_at is None:
        transport = ("a=candidate", "a=end-of", "a=ice-")
        insert_at = next(
            (i for i, line in enumerate(kept) if line.startswith(transport)), len(kept)
        )
    lines: list[str] = []
    for payload in chosen:
        codec = payload.codec
        lines.append(f"a=rtpmap:{payload.pt} {codec.rtpmap}")
        lines.extend(f"a=rtcp-fb:{payload.pt} {fb}" for fb in codec.feedback)
        if codec.fmtp:
            lines.append(f"a=fmtp:{payload.pt} {codec.fmtp}")
    return kept[:insert_at] + lines + kept[insert_at:]


def _with_direction(section: Section, direction: str) -> Section:
    out = [line for line in section if line[2:] not in _DIRECTIONS]
    return [out[0], f"a={direction}", *out[1:]]


def _with_port(section: Section, port: int) -> Section:
    bits = section[0].split(" ")
    bits[1] = str(port)
    return [" ".join(bits), *section[1:]]


# -- outgoing --------------------------------------------------------------------------


def shape(sdp: str, *, offer: bool) -> str:
    """Rewrite one of the SFU's own descriptions the way Cloudflare's SFU writes it.

    One ``sha-256`` fingerprint at session level (observed; aiortc writes three hashes in
    every m-line). Observed in offers: ``a=setup:actpass``, port 9 and ``c=IN IP4
    0.0.0.0`` on each m-line (the candidates carry the addresses); answers keep aiortc's
    ``a=setup`` (the DTLS role is fixed by then) and get the same port and address
    (assumed).
    """
    session, media = split(sdp)
    fingerprints = [
        line
        for line in [*session, *(line for section in media for line in section)]
        if line.startswith("a=fingerprint:")
    ]
    fingerprint = next((f for f in fingerprints if f.startswith("a=fingerprint:sha-256 ")), None)
    fingerprint = fingerprint or next(iter(fingerprints), None)
    head = [line for line in session if not line.startswith(_SESSION_OWN)]
    mids = [mid for mid in (mid_of(section) for section in media) if mid is not None]
    head += [
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=ice-lite",
        "a=extmap-allow-mixed",
        "a=msid-semantic:WMS *",
    ]
    if fingerprint is not None:
        head.append(fingerprint)
    shaped: list[Section] = []
    for section in media:
        lines = [_with_port(section, 9)[0]]
        for line in section[1:]:
            if line.startswith("a=fingerprint:") or (offer and line.startswith("a=setup:")):
                continue
            lines.append("c=IN IP4 0.0.0.0" if line.startswith("c=") else line)
        if offer:
            lines.append("a=setup:actpass")
        shaped.append(lines)
    return join(head, shaped)


class PayloadTypes:
    """One session's payload-type numbers: a codec configuration keeps its number on every
    m-line and in every offer (bundled m-lines share one number space, RFC 8843 §9.1)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, ...], int] = {}
        self._used: set[int] = set()

    def reserve(self, numbers: Iterable[int]) -> None:
        """Numbers the client already uses in this session (its own m-lines)."""
        self._used.update(numbers)

    def number(self, codec: Codec) -> int:
        known = self._by_key.get(codec.key)
        if known is not None:
            return known
        for pt, (name, rate) in _STATIC.items():
            if codec.name.upper() == name and codec.clock_rate == rate:
                return pt
        name = codec.name.lower()
        preferred = _PREFERRED.get(name, _PREFERRED.get(f"{name}/{codec.clock_rate}"))
        candidates = ([preferred] if preferred is not None else []) + list(_DYNAMIC)
        free = next((n for n in candidates if n not in self._used), None)
        if free is None:
            raise ValueError("no payload type left in this session")
        self._used.add(free)
        self._by_key[codec.key] = free
        return free


def subscriber_payloads(
    kind: str, primary: Codec, offered: Sequence[Codec], numbers: PayloadTypes
) -> list[Payload]:
    """What an SFU offer lists on a subscriber's m-line, the forwarded codec first.

    Observed on Cloudflare: RTX for every video codec, RED and ULPFEC for video, RED for
    Opus, and H.264 in every profile and packetization mode the publisher offered. Only
    the first is ever sent; the others are offered as Cloudflare's offers list them.
    """
    chosen: list[Payload] = []

    def add(codec: Codec, rtx: bool) -> int:
        pt = numbers.number(codec)
        if all(p.pt != pt for p in chosen):
            chosen.append(Payload(pt, codec))
            if rtx:
                retransmission = Codec("rtx", codec.clock_rate, fmtp=f"apt={pt}")
                chosen.append(Payload(numbers.number(retransmission), retransmission))
        return pt

    if kind == "video":
        add(replace(primary, feedback=VIDEO_FEEDBACK), rtx=True)
        for codec in offered:
            if codec.name.lower() == "h264" and codec.key != primary.key:
                add(replace(codec, feedback=VIDEO_FEEDBACK), rtx=True)
        add(Codec("red", 90000), rtx=True)
        add(Codec("ulpfec", 90000), rtx=False)
    else:
        pt = add(replace(primary, feedback=()), rtx=False)
        if primary.name.lower() == "opus":
            add(Codec("red", 48000, 2, fmtp=f"{pt}/{pt}"), rtx=False)
    return chosen


# -- incoming --------------------------------------------------------------------------


def aiortc_takes_h264(fmtp: str) -> bool:
    """Whether aiortc's codec matching accepts this H.264 format (it refuses any profile
    but (constrained) baseline, and packetization mode 0)."""
    params = fmtp_params(fmtp)
    if params.get("packetization-mode", "0") != "1":
        return False
    try:
        profile = parse_h264_profile_level_id(params.get("profile-level-id", "42e01f"))[0]
    except ValueError:
        return False
    return profile in (H264Profile.PROFILE_BASELINE, H264Profile.PROFILE_CONSTRAINED_BASELINE)


def acceptable_to_aiortc(offer: str) -> str:
    """A client's offer with every H.264 format aiortc would refuse relabelled as one it
    accepts, so that aiortc can apply it; the SFU then answers with the client's own
    format (``first_forwardable`` on the original text)."""
    session, media = split(offer)
    rewritten: list[Section] = []
    for section in media:
        found = payloads(section)
        refused = {
            p.pt
            for p in found
            if p.codec.name.lower() == "h264" and not aiortc_takes_h264(p.codec.fmtp)
        }
        relabelled = [
            Payload(p.pt, replace(p.codec, fmtp=AIORTC_H264_FMTP)) if p.pt in refused else p
            for p in found
        ]
        rewritten.append(set_payloads(section, relabelled) if refused else section)
    return join(session, rewritten)


FORWARDABLE = {"audio": ("opus", "g722", "pcmu", "pcma"), "video": ("vp8", "h264")}
"""Codecs the SFU can take from a publisher (those its aiortc can negotiate at all)."""


def first_forwardable(kind: str, offered: Sequence[Payload]) -> list[Payload]:
    """The publisher's first codec the SFU can forward, and its RTX if offered: the
    SFU answers with exactly these, in the publisher's own numbers and format."""
    primary = next((p for p in offered if p.codec.name.lower() in FORWARDABLE.get(kind, ())), None)
    if primary is None:
        return []
    rtx = next((p for p in offered if p.codec.is_rtx and p.codec.apt == primary.pt), None)
    return [primary] if rtx is None else [primary, rtx]


def answer_choice(
    section: Section | None, offered: Sequence[Payload]
) -> tuple[int | None, int | None]:
    """The payload types a subscriber's answer chose for the forwarded codec and its RTX.

    ``offered[0]`` is the forwarded codec. (None, None) when the m-line is declined (port
    0, ``a=inactive``), or the answer dropped that codec: then nothing is sent on it.
    """
    if not offered or section is None or port_of(section) == 0:
        return None, None
    if direction_of(section) not in ("recvonly", "sendrecv"):
        return None, None
    primary = offered[0]
    answered = {p.pt: p.codec for p in payloads(section)}
    chosen = answered.get(primary.pt)
    if chosen is None or chosen.name.lower() != primary.codec.name.lower():
        return None, None
    offered_rtx = {p.pt for p in offered if p.codec.is_rtx and p.codec.apt == primary.pt}
    rtx = next((pt for pt, c in answered.items() if pt in offered_rtx and c.is_rtx), None)
    return primary.pt, rtx


def own_choice(answered: Sequence[Payload]) -> tuple[int | None, int | None]:
    """The forwarded codec's and its RTX's payload types in the SFU's own answer."""
    primary = next((p for p in answered if not p.codec.is_rtx), None)
    if primary is None:
        return None, None
    rtx = next((p.pt for p in answered if p.codec.is_rtx and p.codec.apt == primary.pt), None)
    return primary.pt, rtx


def answer_for_aiortc(answer: str, inner_offer: str, outlets: Mapping[str, bool]) -> str:
    """A subscriber's answer rewritten so that the SFU's aiortc applies it without fail.

    ``outlets`` maps each m-line the SFU sends on to whether the answer accepted its
    forwarded codec. Those m-lines get back the payload formats of aiortc's own offer
    (the multi-codec list was the SFU's, not aiortc's); a declined one becomes
    ``a=inactive`` on port 9. Transport attributes a browser leaves out of a declined
    m-line are copied from the first m-line that has them, and every m-line goes back
    into the one BUNDLE group, as the SFU offered it.
    """
    session, media = split(answer)
    _, inner = split(inner_offer)
    inner_by_mid = {mid_of(s): s for s in inner}
    transport = _transport_lines(media)
    rewritten: list[Section] = []
    for original in media:
        section = original
        mid = mid_of(section) or ""
        own = inner_by_mid.get(mid)
        if mid in outlets and own is not None:
            section = set_payloads(section, payloads(own))
            if not outlets[mid]:
                section = _with_port(_with_direction(section, "inactive"), 9)
        present = tuple(p for p in _TRANSPORT if any(line.startswith(p) for line in section))
        section = section + [
            line for line in transport if not present or not line.startswith(present)
        ]
        if kind_of(section) in ("audio", "video") and "a=rtcp-mux" not in section:
            section.append("a=rtcp-mux")
        rewritten.append(section)
    mids = [mid for mid in (mid_of(s) for s in media) if mid is not None]
    head = [line for line in session if not line.startswith("a=group:BUNDLE")]
    head.append(f"a=group:BUNDLE {' '.join(mids)}")
    return join(head, rewritten)


def _transport_lines(media: Sequence[Section]) -> list[str]:
    for section in media:
        lines = [line for line in section if line.startswith(_TRANSPORT)]
        if any(line.startswith("a=ice-ufrag:") for line in lines):
            return lines
    return []


# -- aiortc's codec objects ------------------------------------------------------------


def codec_of(parameters: RTCRtpCodecParameters) -> Codec:
    name = parameters.mimeType.split("/", 1)[1]
    feedback = tuple(
        f"{fb.type} {fb.parameter}" if fb.parameter else fb.type for fb in parameters.rtcpFeedback
    )
    return Codec(
        name,
        parameters.clockRate,
        parameters.channels,
        parameters_to_sdp(parameters.parameters),
        feedback,
    )


def parameters_of(kind: str, payload: Payload) -> RTCRtpCodecParameters:
    codec = payload.codec
    feedback = []
    for value in codec.feedback:
        kind_of_feedback, _, parameter = value.partition(" ")
        feedback.append(RTCRtcpFeedback(type=kind_of_feedback, parameter=parameter or None))
    return RTCRtpCodecParameters(
        mimeType=f"{kind}/{codec.name}",
        clockRate=codec.clock_rate,
        channels=codec.channels,
        payloadType=payload.pt,
        rtcpFeedback=feedback,
        parameters=parameters_from_sdp(codec.fmtp) if codec.fmtp else {},
    )
