"""The recorder against the local SFU as strict as Cloudflare's: ICE-lite, several payload
types per m-line, H.264 High profile, failed results listed apart from the others, m-line
reuse after ``tracks/close``.

Every case here failed before the recorder was made correct against such an SFU: High
profile ended the recording with exit 1 (aiortc refused the whole offer), results were
matched to requests by position, and a re-pulled participant on a reused m-line was never
hooked again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from testbed.analysis import analyze_recording
from testbed.stack import LocalCall, start_local_sfu

from bot.config import TrackRef
from bot.exitcodes import ExitCode
from bot.recording import Recorder, RecordingResult
from tests.e2e import recorder_settings, slots
from tests.faults import wait_until

pytestmark = pytest.mark.slow

DURATION = 8.0


def _manifest(result: RecordingResult) -> dict[str, Any]:
    assert result.path is not None
    data: dict[str, Any] = json.loads(
        result.path.with_name(result.path.name + ".manifest.json").read_text()
    )
    return data


@pytest.fixture
async def high_profile_call() -> AsyncIterator[LocalCall]:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1", codec="H264-high")
        await call.publish("patient", 2, participant_id="p1")
        yield call
    finally:
        await call.close()


async def test_h264_high_profile_is_recorded(high_profile_call: LocalCall, tmp_path: Path) -> None:
    call = high_profile_call
    recorder = Recorder(recorder_settings(call, tmp_path, max_duration=DURATION))
    with structlog.testing.capture_logs() as logs:
        result = await asyncio.wait_for(recorder.run(), 90)

    assert result.exit_code == ExitCode.OK, result.error
    assert result.path is not None
    report = analyze_recording(result.path, slots(2))
    assert report.participants[1].frames_seen > (DURATION - 2) * 30, "High profile on screen"
    assert report.participants[2].frames_seen > (DURATION - 2) * 30
    tracks = {(t["participant"], t["kind"]): t for t in _manifest(result)["sync"]["tracks"]}
    assert tracks[("c1", "video")]["codec"] == "video/H264"
    assert all(t["packets"] > 0 for t in tracks.values())
    [path] = [e for e in logs if e["event"] == "subscriber.ice_path"]
    assert path["ice_role"] == "controlling" and path["remote_ice_lite"] is True
    assert not [e for e in logs if e["event"] == "clock.ssrc_changed"]


async def test_pull_results_are_matched_by_name_not_position(
    two_party_call: LocalCall, tmp_path: Path
) -> None:
    call = two_party_call
    clinician, patient = call.participants
    # Asked for first, found nowhere: the strict SFU lists failed results after the others,
    # so a recorder matching by position would take the patient's mic for this reference.
    ghost = TrackRef(session_id="0" * 32, track_name="ghost")
    patient = patient.model_copy(update={"tracks": (ghost, *patient.tracks)})
    recorder = Recorder(
        recorder_settings(call, tmp_path, participants=(clinician, patient), max_duration=6.0)
    )
    result = await asyncio.wait_for(recorder.run(), 90)

    assert result.exit_code == ExitCode.OK, result.error
    sync = _manifest(result)["sync"]
    pulled = sorted((t["participant"], t["kind"]) for t in sync["tracks"])
    assert pulled == [("c1", "audio"), ("c1", "video"), ("p2", "audio"), ("p2", "video")]
    [failed] = sync["failed_tracks"]
    assert failed["participant"] == "p2" and failed["errorCode"] == "not_found_track_error"
    audio_gaps = [g for g in result.media.gaps if g.participant == "p2" and g.kind == "audio"]
    assert all(g.end < 2.0 for g in audio_gaps), "the patient is heard"


async def test_a_participant_pulled_again_on_a_reused_m_line_is_recorded(
    two_party_call: LocalCall, tmp_path: Path
) -> None:
    """After ``tracks/close`` the strict SFU offers the closed m-lines inactive and puts
    the next pull on them again: the recorder must hook the reused m-line afresh."""
    call = two_party_call
    _, patient = call.participants
    recorder = Recorder(recorder_settings(call, tmp_path, max_duration=12.0))
    run = asyncio.create_task(recorder.run())
    try:
        await asyncio.wait_for(recorder.started.wait(), 30)
        pipeline = recorder.pipeline
        assert pipeline is not None
        await wait_until(lambda: pipeline.now() > 3.0, 30, "three seconds recorded")
        subscriber = recorder.subscriber
        assert subscriber is not None
        before = {t.mid for t in subscriber.tracks if t.participant.id == patient.id}
        await recorder.drop_participant(patient.id)
        await wait_until(lambda: pipeline.now() > 5.0, 30, "five seconds recorded")
        await recorder.add_participant(patient)
        again = [t for t in subscriber.tracks if t.participant.id == patient.id and t.active]
        assert {t.mid for t in again} == before, "the SFU reused the closed m-lines"
        result = await asyncio.wait_for(run, 60)
    finally:
        recorder.stop()
        if not run.done():
            await asyncio.wait_for(run, 60)

    assert result.exit_code == ExitCode.OK, result.error
    assert all(t.packets > 0 and t.frames > 0 for t in again)
    gaps = [g for g in result.media.gaps if g.participant == patient.id and g.start > 2.0]
    assert gaps and all(g.end < 8.0 for g in gaps), "back on screen and heard after re-adding"
