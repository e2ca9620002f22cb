"""A recording that requires consent: nobody's media enters it before their consent.

Real pipeline end to end (local SFU, two synthetic participants, the recorder): consent
is required, the clinician gives it two seconds in, the patient never does. The patient
is black and silent for the whole record and listed as ``consent_pending``; the
clinician only from the moment consent was given. Recorded in ``both`` modes, so the
tracks as they arrived are held to the same rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from testbed.analysis import _scan_video, audio_rms
from testbed.stack import start_local_sfu

from bot.exitcodes import ExitCode
from bot.recording import Recorder, RecordingResult
from tests.e2e import recorder_settings, slots

DURATION = 6.0
GIVEN_AFTER = 2.0


async def _record(output_dir: Path) -> tuple[RecordingResult, float]:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p1")
        settings = recorder_settings(
            call, output_dir, max_duration=DURATION, require_consent=True, mode="both"
        )
        recorder = Recorder(settings)
        running = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 30)
        pipeline = recorder.pipeline
        assert pipeline is not None
        await asyncio.sleep(max(0.0, GIVEN_AFTER - pipeline.now()))  # schedules the call
        given_at = recorder.privacy.set_consent("c1", True)
        assert [p.consent for p in recorder.status().participants] == [True, False]
        return await asyncio.wait_for(running, 60), given_at
    finally:
        await call.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordingResult, float]]:
    yield asyncio.run(_record(tmp_path_factory.mktemp("consent")))


def test_nothing_before_consent(recorded: tuple[RecordingResult, float]) -> None:
    result, given_at = recorded
    assert result.exit_code == ExitCode.OK and result.path is not None, result.error
    assert result.upload is not None
    manifest = result.upload.manifest
    assert manifest.require_consent
    assert [(c.participant_id, c.consent) for c in manifest.consent] == [("c1", "given")]
    pending = {
        (g.participant_id, g.kind): g for g in manifest.gaps if g.reason == "consent_pending"
    }
    assert set(pending) == {("c1", "audio"), ("c1", "video"), ("p1", "audio"), ("p1", "video")}
    for kind in ("audio", "video"):
        assert pending["c1", kind].start == 0.0
        assert pending["c1", kind].end == pytest.approx(given_at, abs=0.2)
        assert pending["p1", kind].end == pytest.approx(DURATION, abs=0.2)
    observations, _, _, _ = _scan_video(result.path, slots(2))
    clinician = np.array([o.time_s for o in observations if o.participant == 1])
    assert clinician.min() == pytest.approx(given_at, abs=0.5)
    assert not [o for o in observations if o.participant == 2]  # the patient never appears
    _, _, patient = audio_rms(result.path)
    assert patient < 0.001


def test_the_archived_tracks_hold_nothing_before_consent(
    recorded: tuple[RecordingResult, float],
) -> None:
    result, given_at = recorded
    assert result.upload is not None
    archive = result.upload.manifest.archive
    # The patient never consented: no file at all; the clinician's start at consent.
    assert sorted((t.participant_id, t.kind) for t in archive) == [
        ("c1", "audio"),
        ("c1", "video"),
    ]
    for track in archive:
        assert track.first_s is not None
        assert given_at - 0.05 <= track.first_s <= given_at + 1.5, track.kind
