"""The terminal panel, rendered on a recording rich Console."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.console import Console

from bot.observe.progress import render_status, warnings_for
from bot.recording.status import ParticipantStatus, RecorderStatus
from bot.rtc.track_status import TrackStatus
from bot.storage import UploadStatus


def _track(kind: str, frames: int, silent_s: float = 0.1) -> TrackStatus:
    return TrackStatus(
        participant="c1",
        kind=kind,
        mid="0" if kind == "audio" else "1",
        codec="opus" if kind == "audio" else "VP8",
        active=True,
        packets=10,
        rtx_packets=0,
        nack_retries=0,
        frames=frames,
        sizes=(),
        clock="sender_reports",
        sender_reports=3,
        seconds_since_packet=silent_s,
    )


def _upload(spooled: int, uploaded: int, error: str | None = None) -> UploadStatus:
    return UploadStatus(
        state="uploading",
        bytes_spooled=spooled,
        bytes_uploaded=uploaded,
        parts=3,
        lag_bytes=spooled - uploaded,
        lag_seconds=0.0,
        alarm=error is not None,
        alarms=int(error is not None),
        errors=int(error is not None),
        last_error=error,
        free_bytes=10**10,
    )


def _status(**override: Any) -> RecorderStatus:
    status = RecorderStatus(
        consultation_id="c-42",
        recording_id="r-1",
        started=True,
        stopping=False,
        duration_s=3725.4,
        paused=False,
        participants=(ParticipantStatus("c1", "clinician", 0, consent=True),),
        tracks=(_track("audio", 50), _track("video", 30)),
        transport=None,
        media=None,
        upload=_upload(25_000_000, 16_000_000),
    )
    return replace(status, **override)


def _text(status: RecorderStatus) -> str:
    console = Console(record=True, width=100, color_system=None)
    console.print(render_status(status))
    return console.export_text()


def test_panel_shows_participants_duration_sizes_and_progress() -> None:
    text = _text(_status())
    assert "consultation c-42" in text and "recording r-1" in text
    assert "1:02:05" in text
    assert "recorded 25.0 MB" in text and "uploaded 16.0 MB (64%)" in text
    assert "c1" in text and "clinician" in text and "audio 50f, video 30f" in text
    assert "!" not in text


def test_panel_warns_about_pause_outage_and_silence() -> None:
    silent = (_track("audio", 50, silent_s=7.2),)
    text = _text(_status(paused=True, upload=_upload(1, 0, error="store down"), tracks=silent))
    assert "PAUSED" in text
    assert "! privacy pause" in text
    assert "! object store failing" in text
    assert "! last storage error: store down" in text
    assert "! no audio from c1 for 7 s" in text
    withdrawn = (ParticipantStatus("p1", "patient", 1, consent=False),)
    assert "no consent from p1: black and silent in the record" in warnings_for(
        _status(participants=withdrawn)
    )


def test_empty_recording() -> None:
    status = _status(participants=(), tracks=(), upload=None)
    assert "(nobody yet)" in _text(status)
    assert warnings_for(status) == []
