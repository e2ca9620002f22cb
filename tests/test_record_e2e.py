"""Participants -> local SFU -> recorder -> MP4, checked by ffprobe and PyAV."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from testbed.analysis import analyze_recording, audio_rms
from testbed.stack import start_local_sfu

from bot.custody.fhir import validate
from bot.exitcodes import ExitCode
from bot.recording import RecordingResult, record
from bot.storage import fhir_key
from bot.storage.boxes import top_level_boxes
from tests.e2e import bot_verify, ffprobe, recorder_settings, slots
from tests.test_overlay import lumas, read_clock

DURATION = 6.0


async def _record_two_party(output_dir: Path) -> RecordingResult:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p1")
        return await record(recorder_settings(call, output_dir, max_duration=DURATION))
    finally:
        await call.close()


@pytest.fixture(scope="module")
def two_party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingResult]:
    yield asyncio.run(_record_two_party(tmp_path_factory.mktemp("rec")))


def test_recording_ends_on_duration_limit(two_party: RecordingResult) -> None:
    assert two_party.exit_code == ExitCode.OK, two_party.error
    assert two_party.stop_reason == "duration_limit"
    assert two_party.path is not None and two_party.path.exists()


def test_ffprobe_sees_h264_and_aac_of_the_right_length(two_party: RecordingResult) -> None:
    assert two_party.path is not None
    info = ffprobe(two_party.path)
    codecs = [s["codec_name"] for s in info["streams"]]
    assert codecs == ["h264", "aac", "aac", "aac"]  # video, mix, clinician, patient
    video = info["streams"][0]
    assert (video["width"], video["height"]) == (1280, 720)
    assert abs(float(info["format"]["duration"]) - DURATION) < 0.5
    assert [s["tags"]["handler_name"] for s in info["streams"][1:]] == [
        "mix",
        "clinician",
        "patient",
    ]


def test_file_is_fragmented(two_party: RecordingResult) -> None:
    assert two_party.path is not None
    boxes = [box.kind.decode() for box in top_level_boxes(two_party.path)]
    assert boxes[:2] == ["ftyp", "moov"]
    assert boxes.count("moof") >= DURATION - 1  # about one fragment a second


def test_both_participants_are_seen_and_heard(two_party: RecordingResult) -> None:
    assert two_party.path is not None
    report = analyze_recording(two_party.path, slots(2))
    assert set(report.participants) == {1, 2}
    for participant in report.participants.values():
        assert participant.frames_seen > (DURATION - 2) * 25
    mix, clinician, patient = audio_rms(two_party.path)
    assert min(mix, clinician, patient) > 0.01
    assert not two_party.media.gaps or all(g.start < 2.0 for g in two_party.media.gaps)


def test_a_third_party_verifies_the_record(two_party: RecordingResult, tmp_path: Path) -> None:
    """Object, fragment chain, audit trail, signature, decoding and FHIR, all in one verdict."""
    assert two_party.path is not None
    done = bot_verify(two_party.path, public_key_dir=tmp_path)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    checks = [line.split()[1] for line in done.stdout.splitlines()[:-1]]
    assert checks == ["object", "fragments", "audit", "signature", "media", "fhir"]
    assert done.stdout.splitlines()[-1].startswith("VERIFIED: ")


def test_the_fhir_resource_names_this_object(two_party: RecordingResult) -> None:
    """Read the stored DocumentReference back: its hash is the object's SHA-1 (base64, as
    FHIR defines it), its size the object's, and it validates as FHIR R4."""
    assert two_party.path is not None
    resource = json.loads(Path(fhir_key(str(two_party.path))).read_bytes())
    validate(resource)
    attachment = resource["content"][0]["attachment"]
    body = two_party.path.read_bytes()
    assert base64.b64decode(attachment["hash"]) == hashlib.sha1(body).digest()
    assert attachment["size"] == len(body)
    assert two_party.upload is not None and attachment["url"] == two_party.upload.object_key
    team = resource["contained"][1]["participant"]
    assert [(p["role"][0]["text"], p["member"]["identifier"]["value"]) for p in team] == [
        ("clinician", "c1"),
        ("patient", "p1"),
    ]


def test_what_a_person_sees_fills_the_frame_and_carries_the_time(
    two_party: RecordingResult,
) -> None:
    """Issue #15's "done when": each participant fills at least 90% of the width of its half
    of the frame, and the burned-in clock, read back from decoded frames, is the
    manifest's start time plus the frame's time, within a second."""
    assert two_party.path is not None and two_party.upload is not None
    started = two_party.upload.manifest.started_at.timestamp()
    frames = lumas(two_party.path)
    height, width = frames[0].shape
    fps = len(frames) / two_party.media.duration
    for n in range(int(fps), len(frames), int(fps)):
        shown = datetime.strptime(read_clock(frames[n], height), "%Y-%m-%d %H:%M:%S %Z")
        assert abs(shown.replace(tzinfo=UTC).timestamp() - (started + n / fps)) < 1.0, n
    middle = frames[len(frames) // 2]
    for half in (middle[:, : width // 2], middle[:, width // 2 :]):
        lit = np.count_nonzero((half > 24).any(axis=0)) / half.shape[1]
        assert lit >= 0.90, f"a participant fills {lit:.0%} of its half's width"
