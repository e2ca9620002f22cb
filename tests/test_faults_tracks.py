"""Per-track errors while recording: a track not there yet, a track in a foreign codec.

The recorder starts with the app's references while a publisher is still connecting, so
one track's pull fails with ``not_found_track_error`` (injected on the local SFU, which
runs as its own process). The recorder keeps recording the rest, pulls that track again
with backoff, and places it on the timeline where it arrives, with the gap reported.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import structlog
from testbed.analysis import analyze_recording
from testbed.stack import LocalCall

from bot.exitcodes import ExitCode
from bot.realtime import RealtimeClient
from bot.recording import Recorder
from tests.e2e import recorder_settings, slots

pytestmark = pytest.mark.slow


async def test_a_track_not_found_at_first_is_pulled_again_and_joins_the_timeline(
    two_party_call: LocalCall, tmp_path: Path
) -> None:
    call = two_party_call
    patient = call.participants[1]
    video = next(ref for ref in patient.tracks if ref.track_name == "video")
    # The first pull and the first two pulls again fail: back at about 1 + 2 + 4 = 7 s.
    await call.inject_fault(
        {
            "action": "fail_track",
            "trackName": video.track_name,
            "sessionId": video.session_id,  # the publisher's session: the patient's only
            "errorCode": "not_found_track_error",
            "times": 3,
        }
    )
    recorder = Recorder(recorder_settings(call, tmp_path, max_duration=14))
    with structlog.testing.capture_logs() as logs:
        result = await asyncio.wait_for(recorder.run(), 90)

    assert result.exit_code == ExitCode.OK, result.error
    tries = [e for e in logs if e["event"].startswith("recorder.repull")]
    repulled = [e for e in logs if e["event"] == "recorder.tracks_repulled"]
    assert len(tries) == 2 and [e["pulled"] for e in repulled] == [1]
    gaps = [g for g in result.media.gaps if g.participant == patient.id and g.kind == "video"]
    assert gaps and gaps[0].start < 1.0 and gaps[0].reason.startswith("no media yet")
    joined = gaps[0].end
    assert 5.0 < joined < 10.0
    audio_gaps = [g for g in result.media.gaps if g.participant == patient.id and g.kind == "audio"]
    assert all(g.end < 2.0 for g in audio_gaps)  # the patient was heard throughout

    assert result.path is not None
    report = analyze_recording(result.path, slots(2))
    assert report.participants[2].frames_seen > 3 * 30  # seen for the last several seconds
    print(f"\n[not_found at first] patient video joined at {joined:.2f} s after 3 failed pulls")


class _CodecSwap(httpx.AsyncBaseTransport):
    """Between the recorder and the local SFU: the SFU's offers claim VP9 for one track,
    and the recorder's answers are turned back into what the SFU (aiortc, VP8) accepts.

    The local SFU cannot take a VP9 publisher (its aiortc inlet refuses the codec), so this
    is how a browser's VP9 track reaches the recorder here.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, publisher: str) -> None:
        self._inner = inner
        self._publisher = publisher

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/renegotiate"):
            body = request.content.replace(b"VP9/90000", b"VP8/90000")
            request = httpx.Request(
                request.method,
                request.url,
                headers={k: v for k, v in request.headers.items() if k != "content-length"},
                content=body,
            )
        response = await self._inner.handle_async_request(request)
        if not request.url.path.endswith("/tracks/new"):
            return response
        await response.aread()
        data = json.loads(response.content)
        mids = [
            t.get("mid")
            for t in data.get("tracks", [])
            if t.get("sessionId") == self._publisher and t.get("trackName") == "video"
        ]
        offer = data.get("sessionDescription")
        if mids and offer:
            sections = offer["sdp"].split("\r\nm=")
            offer["sdp"] = "\r\nm=".join(
                s.replace("VP8/90000", "VP9/90000") if f"a=mid:{mids[0]}\r\n" in s else s
                for s in sections
            )
        return httpx.Response(response.status_code, headers=response.headers, json=data)


async def test_a_track_in_a_codec_the_recorder_cannot_decode_is_declined(
    two_party_call: LocalCall, tmp_path: Path
) -> None:
    call = two_party_call
    clinician, patient = call.participants
    video = next(ref for ref in patient.tracks if ref.track_name == "video")
    settings = recorder_settings(call, tmp_path, max_duration=8)
    swap = _CodecSwap(httpx.AsyncHTTPTransport(), video.session_id)
    client = RealtimeClient(call.app_id, call.app_secret, base_url=call.base_url, transport=swap)
    recorder = Recorder(settings, client=client)
    result = await asyncio.wait_for(recorder.run(), 90)

    assert result.exit_code == ExitCode.OK, result.error
    [failed] = result.failed_tracks
    assert failed["participant"] == patient.id and failed["errorCode"] == "codec_not_supported"
    assert "VP9" in (failed["reason"] or "")
    assert result.path is not None
    report = analyze_recording(result.path, slots(2))
    assert report.participants[1].frames_seen > 4 * 30  # the clinician is on screen
    assert 2 not in report.participants  # the patient's picture was never received ...
    gaps = [g for g in result.media.gaps if g.participant == patient.id]
    assert {g.kind for g in gaps} == {"video"}  # ... but the patient is heard throughout
    assert clinician.id not in {g.participant for g in gaps}
