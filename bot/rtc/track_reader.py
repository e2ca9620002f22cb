"""Each received track's reader, and the watchdog that asks for keyframes when a picture
does not come.

Every accepted track is drained for as long as it lives: an unread aiortc track queue
grows forever. aiortc asks for a keyframe only when a frame fails to decode, so a
picture lost some other way (a keyframe that never came) would stay frozen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from functools import partial

import av
import structlog
from aiortc.mediastreams import MediaStreamError

from bot.rtc.aiortc_compat import request_keyframe
from bot.rtc.tracks import MAX_SIZES, PulledTrack

log = structlog.get_logger("bot.rtc.subscriber")

FrameSink = Callable[
    [int, float, av.VideoFrame | av.AudioFrame, Callable[[], float | None] | None], None
]
"""``(slot, timeline_seconds, frame, replace)``: where decoded frames go (the media
pipeline). ``replace`` (video only) asks the stream's clock again later: its mapping
improves as packets arrive, most in the stream's first second."""

KEYFRAME_STALL_SECONDS = 1.0
"""Packets flowing but no picture decoded for this long: ask for a keyframe again."""


async def read_track(track: PulledTrack, sink: FrameSink) -> None:
    """Hand each decoded frame to ``sink``, placed on the timeline, until the track ends."""
    media = track.receiver.track
    try:
        while True:
            frame = await media.recv()
            t = track.clock.timeline_seconds(frame.pts)
            track.last_frame = time.time()
            if t is None:
                continue
            track.frames += 1
            if track.kind == "video":
                _note_size(track, t, frame.width, frame.height)
                sink(track.slot, t, frame, partial(track.clock.timeline_seconds, frame.pts))
            else:
                sink(track.slot, t, frame, None)
    except MediaStreamError:
        log.info("subscriber.track_ended", participant=track.participant.id, mid=track.mid)


def _note_size(track: PulledTrack, t: float, width: int, height: int) -> None:
    if track.sizes and track.sizes[-1][1:] == (width, height):
        return
    if len(track.sizes) < MAX_SIZES:
        track.sizes.append((round(t, 3), width, height))
    log.info("subscriber.picture_size", mid=track.mid, width=width, height=height)


async def watch_keyframes(on_mid: Mapping[str, PulledTrack]) -> None:
    """Ask again for a keyframe when packets arrive but no picture comes out, on every
    track ``on_mid`` holds at the time."""
    while True:
        await asyncio.sleep(0.5)
        now = time.time()
        for track in on_mid.values():
            if track.tap.foreign_packets and not track.foreign_reported:
                # The SFU sends a payload type the answer did not accept (a codec it
                # forwards that was not first in its offer): the track stays dark.
                track.foreign_reported = True
                log.warning(
                    "subscriber.unexpected_payload_type",
                    mid=track.mid,
                    payload_type=track.tap.foreign_payload_type,
                )
            stalled = (
                track.kind == "video"
                and track.clock.ssrc is not None
                and now - track.last_packet < KEYFRAME_STALL_SECONDS
                and now - max(track.last_frame, track.last_keyframe_request)
                > KEYFRAME_STALL_SECONDS
            )
            if stalled and track.clock.ssrc is not None:
                track.last_keyframe_request = now
                request_keyframe(track.receiver, track.clock.ssrc)
                log.info("subscriber.keyframe_requested", mid=track.mid)
