"""Each archived track's decoded frames, in order, at their place on the recording's
timeline: where the live composite put them.

A track file keeps the sender's timing; its manifest's anchors say how that timing sat
on the timeline as the recording ran (``bot.media.track_file``). A frame at file second
``p`` goes to ``p + (t - f)`` of the last anchor ``(f, r, t)`` with ``f <= p``. The file's
own first timestamp is taken as the first anchor's file second, because MP4 demuxers
start a fragmented file at zero whatever its first fragment says.

Video goes where the live composite puts it: by the mapping known once the frame has
settled (``bot.media.pipeline.Replace``), the anchor in effect ``settle`` seconds later,
unless that one is a clock step.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from fractions import Fraction

import av

from bot.compose.sources import TrackSource
from bot.media.pipeline import REPLACE_LIMIT_SECONDS

Placed = tuple[float, int, int, av.VideoFrame | av.AudioFrame]
"""``(timeline seconds, tie-breaker, slot, frame)``: sortable across tracks."""


class Anchors:
    """File seconds to timeline seconds, piecewise, from a track's manifest."""

    def __init__(self, anchors: tuple[tuple[float, float, float], ...]) -> None:
        if not anchors:
            raise ValueError("a track with frames has at least one anchor")
        self._files = [a[0] for a in anchors]
        self._offsets = [a[2] - a[0] for a in anchors]

    @property
    def start(self) -> float:
        return self._files[0]

    def place(self, file_seconds: float, settle: float = 0.0) -> float:
        offset = self._offset(file_seconds)
        if settle:
            settled = self._offset(file_seconds + settle)
            if abs(settled - offset) <= REPLACE_LIMIT_SECONDS:
                offset = settled
        return file_seconds + offset

    def _offset(self, file_seconds: float) -> float:
        index = max(0, bisect.bisect_right(self._files, file_seconds + 1e-6) - 1)
        return self._offsets[index]


def placed_frames(source: TrackSource, order: int, settle: float = 0.0) -> Iterator[Placed]:
    """Decode ``source`` and yield each frame at its timeline second (``order``: a
    tie-breaker between tracks, so frames never compare; ``settle``: for video, how long
    the live composite lets a frame settle before placing it)."""
    track = source.track
    anchors = Anchors(track.anchors)
    if track.kind != "video":
        settle = 0.0
    with av.open(str(source.path)) as container:
        stream = container.streams[0]
        if stream.codec_context is not None:
            stream.codec_context.thread_type = "AUTO"
        shift: float | None = None
        sequence = 0
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            base = packet.time_base or Fraction(1, 1000)
            if shift is None:
                shift = anchors.start - float(packet.pts * base)
            for frame in packet.decode():
                if not isinstance(frame, av.VideoFrame | av.AudioFrame) or frame.pts is None:
                    continue
                assert frame.time_base is not None
                p = float(frame.pts * frame.time_base) + shift
                sequence += 1
                yield anchors.place(p, settle), order * 1_000_000_000 + sequence, track.slot, frame
