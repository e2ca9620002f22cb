"""What an encoded frame says about itself, without decoding it: keyframe or not, and for
a VP8 keyframe its picture size.

The track archive stores frames as they arrived, so it must know where a file may start
(a keyframe: the file decodes from its first frame) and when the sender changed size (a
simulcast layer switch, its own adaptation), which the manifest lists for the composer.
H.264 frames come from aiortc's depayloader in Annex B form (start codes before each NAL
unit); a picture size needs its SPS decoded, which ``TrackFile`` leaves to a decoder on
keyframes only.
"""

from __future__ import annotations

VP8_START_CODE = b"\x9d\x01\x2a"
H264_IDR = 5
H264_SPS = 7


def vp8_keyframe(frame: bytes) -> bool:
    """RFC 6386 §9.1: bit 0 of the frame tag is 0 for a key frame."""
    return len(frame) >= 10 and frame[0] & 1 == 0 and frame[3:6] == VP8_START_CODE


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height of a VP8 key frame (14-bit fields after the start code)."""
    if not vp8_keyframe(frame):
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def h264_nal_types(frame: bytes) -> set[int]:
    """The NAL unit types of an Annex B access unit (each after a 00 00 01 start code)."""
    types: set[int] = set()
    start = frame.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(frame):
        types.add(frame[start + 3] & 0x1F)
        start = frame.find(b"\x00\x00\x01", start + 3)
    return types


def h264_keyframe(frame: bytes) -> bool:
    """An IDR picture with its SPS: the only H.264 frame a file (or decoder) can start at.
    WebRTC senders put SPS and PPS in front of every IDR."""
    types = h264_nal_types(frame)
    return H264_IDR in types and H264_SPS in types


def is_keyframe(codec: str, frame: bytes) -> bool:
    """``codec``: the lower-case codec name (``vp8``, ``h264``, ``opus``); every audio
    frame starts a decodable stream."""
    if codec == "vp8":
        return vp8_keyframe(frame)
    if codec == "h264":
        return h264_keyframe(frame)
    return True
