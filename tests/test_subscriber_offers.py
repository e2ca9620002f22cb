"""The subscriber never leaves an SFU offer unanswered and never dies on one it cannot use.

Error paths only, so the SFU here is ``httpx.MockTransport`` answering as Cloudflare does
with offers from ``tests/cloudflare_sdp.py``; the real SFU is in the end-to-end tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from bot.config import Participant, TrackRef
from bot.realtime import OfferRefusedError, RealtimeClient
from bot.rtc.subscriber import Subscriber
from bot.timeline import Timeline
from tests.cloudflare_sdp import OPUS_WITH_RED, VP8_WITH_HELPERS, Section, offer

PUBLISHER = "p" * 32
PARTICIPANT = Participant(
    id="p1",
    role="patient",
    tracks=(TrackRef.parse(f"{PUBLISHER}/mic"), TrackRef.parse(f"{PUBLISHER}/cam")),
)


class FakeCloudflare:
    """Creates a session, answers the pull with ``sdp`` as the offer, keeps the answer."""

    def __init__(self, sdp: str) -> None:
        self.sdp = sdp
        self.answers: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/sessions/new"):
            return httpx.Response(201, json={"sessionId": "s" * 32})
        if path.endswith("/tracks/new"):
            tracks = [
                {"sessionId": PUBLISHER, "trackName": name, "mid": mid}
                for name, mid in (("mic", "0"), ("cam", "1"))
            ]
            return httpx.Response(
                200,
                json={
                    "requiresImmediateRenegotiation": True,
                    "tracks": tracks,
                    "sessionDescription": {"type": "offer", "sdp": self.sdp},
                },
            )
        if path.endswith("/renegotiate"):
            self.answers.append(json.loads(request.content)["sessionDescription"]["sdp"])
            return httpx.Response(200, json={})
        if path.endswith("/tracks/update"):
            return httpx.Response(200, json={"tracks": [{"mid": "1"}]})
        return httpx.Response(404, json={"errorCode": "not_found"})


async def _pull(sdp: str) -> tuple[FakeCloudflare, Subscriber, Callable[[], object]]:
    cloudflare = FakeCloudflare(sdp)
    client = RealtimeClient("app", "secret", transport=httpx.MockTransport(cloudflare))
    subscriber = Subscriber(client, lambda *_: None, timeline=Timeline(0.0))
    await subscriber.open()

    async def close() -> None:
        await subscriber.close()
        await client.aclose()

    return cloudflare, subscriber, close


def _cloudflare_offer() -> str:
    return offer(
        [Section("audio", "0", OPUS_WITH_RED, 1000), Section("video", "1", VP8_WITH_HELPERS, 2000)]
    )


async def test_an_offer_aiortc_refuses_is_answered_with_its_new_m_lines_declined() -> None:
    # aiortc's parser raises ValueError on this RTX line and refuses the whole offer.
    sdp = _cloudflare_offer().replace("a=fmtp:97 apt=96", "a=fmtp:97 apt=x")
    cloudflare, subscriber, close = await _pull(sdp)
    try:
        failures = await subscriber.pull(PARTICIPANT, 0)
    finally:
        await close()
    assert {f.errorCode for f in failures} == {"offer_refused"}
    assert len(failures) == 2 and not subscriber.tracks
    [answer] = cloudflare.answers
    sections = answer.split("\r\nm=")[1:]
    assert len(sections) == 2 and all("a=inactive" in s for s in sections)
    reasons = {f.reason for f in subscriber.failed_tracks.values()}
    assert reasons == {
        "the recorder's WebRTC stack refused the SFU's offer; the track was declined"
    }


async def test_an_offer_nothing_can_save_is_one_clear_error() -> None:
    sdp = _cloudflare_offer().replace(
        "a=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host", "a=candidate:garbage"
    )
    cloudflare, subscriber, close = await _pull(sdp)
    try:
        with pytest.raises(OfferRefusedError) as caught:
            await subscriber.pull(PARTICIPANT, 0)
    finally:
        await close()
    message = str(caught.value)
    assert "\n" not in message and "AssertionError" in message and "offer_refused" in message
    assert "mic" not in message and "cam" not in message  # no track names from the SDP
    assert cloudflare.answers == []
