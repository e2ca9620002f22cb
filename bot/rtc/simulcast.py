"""The simulcast layer the recorder asks the SFU for on each video track it pulls."""

from __future__ import annotations

import structlog

from bot.realtime import RealtimeClient, SimulcastPreference, UpdateTrackObject
from bot.rtc.tracks import PulledTrack

log = structlog.get_logger("bot.rtc.subscriber")


async def prefer_layer(
    client: RealtimeClient, session_id: str, tracks: list[PulledTrack], layer: str | None
) -> None:
    """Ask for ``layer`` (``recording.simulcast_layer``) on each of the video ``tracks``
    (``tracks/update``); nothing when ``layer`` is None.

    Sent after the pull, once the track's kind is known from the offer: a simulcast
    preference on an audio track is not something Cloudflare documents. With
    ``ridNotAvailable: asciibetical`` the SFU falls to the next layer in a-z order
    when the preferred one is not sent; a publisher without simulcast is unaffected.
    """
    if not tracks or layer is None:
        return
    preference = SimulcastPreference(
        preferredRid=layer,
        priorityOrdering="none",
        ridNotAvailable="asciibetical",
    )
    result = await client.update_tracks(
        session_id,
        [
            UpdateTrackObject(
                mid=t.mid,
                sessionId=t.ref.session_id,
                trackName=t.ref.track_name,
                simulcast=preference,
            )
            for t in tracks
        ],
    )
    for item in result.tracks:
        if item.failed:
            log.warning("subscriber.layer_not_set", mid=item.mid, error_code=item.errorCode)
