"""Tracks in a codec the recorder cannot decode (VP9, AV1, H.265 ...): declined, not fatal.

aiortc refuses a whole remote description when one of its m-sections offers no codec it
knows, which would lose every track of that pull. So before aiortc sees the SFU's offer,
each such section gets a stand-in codec aiortc knows (same payload types); aiortc's
answer is then given back the offered codec lines and ``a=inactive``, so the SFU is told
the truth (nothing of that track will be received), and the track is reported as not
recordable while the others are recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DECODABLE = {"audio": {"opus", "pcmu", "pcma"}, "video": {"vp8", "h264"}}
"""What aiortc decodes (``aiortc.codecs``), by kind, lower-case encoding names."""
_HELPERS = {"rtx", "red", "ulpfec", "flexfec-03", "telephone-event", "cn"}
"""Payloads that carry no media of their own (retransmission, redundancy, DTMF)."""
_STAND_IN = {"audio": "opus/48000/2", "video": "VP8/90000"}
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)", re.IGNORECASE)
_CODEC_LINE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)")
_DIRECTION = {"a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"}


@dataclass(frozen=True)
class Declined:
    """An offered m-section the recorder cannot decode: its mid, codec and codec lines."""

    mid: str
    codec: str
    codec_lines: tuple[str, ...]

    @property
    def reason(self) -> str:
        known = ", ".join(sorted(name for names in DECODABLE.values() for name in names))
        return (
            f"the recorder cannot decode {self.codec} (it decodes {known}); "
            "have the app publish VP8 or H.264"
        )


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


def accept_undecodable(offer: str) -> tuple[str, list[Declined]]:
    """The offer, with every undecodable audio/video section given a stand-in codec."""
    parts = _split(offer)
    declined = []
    for section in parts[1:]:
        kind = section[0][2:].split(" ", 1)[0]
        mid = _mid(section)
        if kind not in DECODABLE or mid is None:
            continue
        names = {m.group(2).lower(): m.group(2) for line in section if (m := _RTPMAP.match(line))}
        media = [name for name in names if name not in _HELPERS]
        if not media or any(name in DECODABLE[kind] for name in media):
            continue
        codec_lines = tuple(line for line in section if _CODEC_LINE.match(line))
        declined.append(Declined(mid, names[media[0]], codec_lines))
        kept = [line for line in section if not _CODEC_LINE.match(line)]
        payload_types = section[0].split(" ")[3:]
        kept += [f"a=rtpmap:{pt} {_STAND_IN[kind]}" for pt in payload_types]
        section[:] = kept
    return _join(parts), declined


def decline(answer: str, declined: list[Declined]) -> str:
    """aiortc's answer with each declined section's codec lines as offered, inactive."""
    by_mid = {d.mid: d for d in declined}
    parts = _split(answer)
    for section in parts[1:]:
        item = by_mid.get(_mid(section) or "")
        if item is None:
            continue
        kept = [line for line in section if not _CODEC_LINE.match(line) and line not in _DIRECTION]
        section[:] = [*kept, "a=inactive", *item.codec_lines]
    return _join(parts)
