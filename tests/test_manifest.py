from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from bot.manifest import Gap, Manifest, ParticipantEntry, TrackEntry, VideoInfo


def _manifest(**extra: object) -> Manifest:
    values: dict[str, object] = {
        "consultation_id": "c-42",
        "recording_id": "r-1",
        "started_at": datetime(2026, 1, 2, 10, 0, tzinfo=timezone(timedelta(hours=2))),
    }
    values.update(extra)
    return Manifest.model_validate(values)


def test_round_trip_keeps_every_field() -> None:
    manifest = _manifest(
        participants=(ParticipantEntry(id="p1", role="clinician"),),
        tracks=(TrackEntry(participant_id="p1", kind="video", track_name="cam"),),
        video=VideoInfo(codec="h264", width=1280, height=720, fps=30),
        gaps=(Gap(participant_id="p1", kind="video", start=3.0, end=4.5, reason="mute"),),
        sync={"offset_ms_p95": 12.5},
    )
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_times_are_stored_in_utc() -> None:
    manifest = _manifest()
    assert manifest.started_at.utcoffset() == timedelta(0)
    assert manifest.started_at == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)
    assert '"2026-01-02T08:00:00Z"' in manifest.to_json().decode()


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValidationError):
        _manifest(started_at=datetime(2026, 1, 2, 10, 0))


@pytest.mark.parametrize("bad_id", ["Jane Doe", "jane.doe@example.org", ""])
def test_participant_ids_must_be_opaque(bad_id: str) -> None:
    with pytest.raises(ValidationError):
        ParticipantEntry(id=bad_id, role="patient")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="patient_name"):
        _manifest(patient_name="Jane Doe")
