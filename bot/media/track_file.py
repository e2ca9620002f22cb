"""One received track, muxed as it arrived: no decode, no encode.

VP8 and Opus go into WebM, H.264 into fragmented MP4, each in pieces of about a second
(Matroska clusters, MP4 fragments) that reach the file whole, so a crash loses at most
the piece being written and the file streams to the store while it grows. A video file
starts at a keyframe, so it decodes from its first frame; until one comes (and after a
stretch the record must not hold) frames are dropped and ``want_keyframe`` asks the
sender for one.

Timestamps are the sender's own (RTP) clock, so the file plays with the timing it was
sent with, starting where its first frame sits on the recording's timeline. Where each
frame belongs on that timeline (``bot.rtc.clock``: RTCP sender reports, else arrival)
moves a little as the mapping improves; the moves are kept as anchors ``(file seconds,
rtp seconds, timeline seconds)`` for the manifest, from which a composer places every
frame where the live composite would have. Used from one thread at a time (the
archive's lock): the event loop, or aiortc's decoder thread of the track's receiver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from bot.media.bitstream import is_keyframe, vp8_size

CONTAINER = {"vp8": "webm", "opus": "webm", "h264": "mp4"}
"""The container each codec as received is archived in."""
PIECE_SECONDS = 1.0
"""Matroska cluster / MP4 fragment length: what a crash can lose at most."""
GAP_SECONDS = {"video": 1.0, "audio": 0.25}
"""No frame for longer than this is a gap in the manifest (video senders may idle at a
few frames a second; audio is continuous unless muted or lost)."""
ANCHOR_STEP = 0.002
"""A new mapping anchor when the file-to-timeline offset moves by more than this."""
MAX_LISTED = 256
"""Sizes and gaps kept per track: a bad stream must not grow the manifest."""
MAX_ANCHORS = 2048
"""Anchors kept per track; past it the last one follows the mapping."""
CLOCK_STEP_SECONDS = 30.0
"""RTP time jumping forwards by more than this (or back) is a new sender clock (a
restarted or switched stream): the file goes on from its last frame."""
KEYFRAME_ASK_SECONDS = 1.0
_TICKS_PER_SECOND = {"webm": 1000, "mp4": 90_000}
"""The file's time base: Matroska counts milliseconds, MP4 video the RTP clock's 90 kHz."""


@dataclass
class TrackFileReport:
    """What the file holds, for the track's manifest."""

    container: str
    codec: str
    first_s: float | None = None
    last_s: float | None = None
    frames: int = 0
    keyframes: int = 0
    frames_before_keyframe: int = 0
    """Dropped because the file (or a resumption) had to start at a keyframe."""
    bytes_in: int = 0
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    anchors: list[tuple[float, float, float]] = field(default_factory=list)
    """``(file seconds, rtp seconds, timeline seconds)``: the mapping at the first frame
    and at each move."""


class TrackFile:
    """Writes one track's encoded frames to ``path``; ``codec``: vp8, h264 or opus."""

    def __init__(
        self,
        path: Path,
        codec: str,
        *,
        on_piece: Callable[[], None] = lambda: None,
        want_keyframe: Callable[[], None] = lambda: None,
    ) -> None:
        if codec not in CONTAINER:
            raise ValueError(f"the track archive cannot store {codec!r}")
        self.path = path
        self.codec = codec
        self.kind = "audio" if codec == "opus" else "video"
        self.report = TrackFileReport(CONTAINER[codec], codec)
        self._rate = _TICKS_PER_SECOND[CONTAINER[codec]]
        self._time_base = Fraction(1, self._rate)
        self._on_piece = on_piece
        self._want_keyframe = want_keyframe
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1
        self._piece_start = 0.0
        self._needs_keyframe = self.kind == "video"
        self._asked = 0.0
        self._base: float | None = None
        """File seconds minus RTP seconds (fixed until the sender's clock steps)."""
        self._offset: float | None = None
        """Timeline seconds minus file seconds at the last anchor."""

    def write(self, t: float, rtp_seconds: float, data: bytes) -> None:
        """Store a frame placed at timeline second ``t`` (its RTP time ``rtp_seconds``)."""
        key = is_keyframe(self.codec, data)
        if self._needs_keyframe and not key:
            self.report.frames_before_keyframe += 1
            self._ask_for_keyframe()
            return
        self._needs_keyframe = False
        if self._container is None:
            self._open(t, data)
        pts = self._file_pts(t, rtp_seconds)
        self._note(t, pts / self._rate, rtp_seconds, data, key)
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = self._time_base
        packet.stream = self._stream
        packet.is_keyframe = key
        self._container.mux(packet)
        if t - self._piece_start >= PIECE_SECONDS:
            self._piece_start = t
            self._on_piece()

    def _file_pts(self, t: float, rtp_seconds: float) -> int:
        """The frame's timestamp in the file: its RTP time, shifted so the file starts
        at its first frame's place on the timeline."""
        if self._base is None:
            self._base = t - rtp_seconds
        pts = round((rtp_seconds + self._base) * self._rate)
        step = (pts - self._last_pts) / self._rate
        if self._last_pts >= 0 and not 0 < step <= CLOCK_STEP_SECONDS:
            pts = self._last_pts + 1
            self._base = pts / self._rate - rtp_seconds
            self._offset = None  # anchor the new clock
        self._last_pts = pts
        return pts

    def resume_at_keyframe(self) -> None:
        """Frames were left out (a pause, withdrawn consent): go on only from a keyframe,
        so the picture after the stretch decodes without what was left out."""
        if self.kind == "video":
            self._needs_keyframe = True

    def close(self) -> None:
        """Write the last piece and the index; the file is then complete."""
        if self._container is not None:
            self._container.close()
            self._container = None
        self._on_piece()

    def _open(self, t: float, keyframe: bytes) -> None:
        container = CONTAINER[self.codec]
        options = (
            # "live": the muxer never seeks back to fill in sizes, a duration or cues, so
            # every byte stays as written (the fragment chain holds) and the file is at
            # any moment a playable prefix of itself.
            {"cluster_time_limit": str(int(PIECE_SECONDS * 1000)), "live": "1"}
            if container == "webm"
            else {
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "frag_duration": str(int(PIECE_SECONDS * 1_000_000)),
            }
        )
        output = av.open(
            str(self.path), mode="w", format=container, options={**options, "flush_packets": "1"}
        )
        stream: Any
        if self.codec == "opus":
            # An encoder-backed stream, never fed: opening libopus writes the OpusHead
            # (CodecPrivate) that WebM players need, which a bare mux stream lacks.
            stream = output.add_stream("libopus", rate=48_000, layout="stereo")
        else:
            width, height = self._picture_size(keyframe)
            stream = output.add_mux_stream(self.codec, width=width, height=height)
            self.report.sizes.append((round(t, 3), width, height))
        stream.time_base = self._time_base
        self._container, self._stream = output, stream

    def _picture_size(self, keyframe: bytes) -> tuple[int, int]:
        if self.codec == "vp8":
            size = vp8_size(keyframe)
            assert size is not None, "a file starts at a keyframe"
            return size
        decoder = av.CodecContext.create("h264", "r")
        frames = decoder.decode(av.Packet(keyframe)) + decoder.decode(None)
        if not frames:
            raise ValueError("an H.264 keyframe that does not decode")
        frame = frames[0]
        return frame.width, frame.height

    def _note(
        self, t: float, file_seconds: float, rtp_seconds: float, data: bytes, key: bool
    ) -> None:
        report = self.report
        if report.last_s is not None and t - report.last_s > GAP_SECONDS[self.kind]:
            _append(report.gaps, (round(report.last_s, 3), round(t, 3)))
        if report.first_s is None:
            report.first_s = t
        report.last_s = t
        report.frames += 1
        report.keyframes += key and self.kind == "video"
        report.bytes_in += len(data)
        offset = t - file_seconds
        if self._offset is None or abs(offset - self._offset) > ANCHOR_STEP:
            self._offset = offset
            anchor = (round(file_seconds, 6), round(rtp_seconds, 6), round(t, 6))
            if len(report.anchors) == MAX_ANCHORS:
                report.anchors[-1] = anchor
            else:
                report.anchors.append(anchor)
        if key and self.codec == "vp8":
            size = vp8_size(data)
            if size is not None and report.sizes and report.sizes[-1][1:] != size:
                _append(report.sizes, (round(t, 3), *size))

    def _ask_for_keyframe(self) -> None:
        now = time.monotonic()
        if now - self._asked >= KEYFRAME_ASK_SECONDS:
            self._asked = now
            self._want_keyframe()


def _append(items: list[Any], item: Any) -> None:
    if len(items) < MAX_LISTED:
        items.append(item)
