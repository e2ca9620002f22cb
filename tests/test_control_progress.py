"""The terminal panel, rendered on a recording rich Console."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from bot.observe.progress import render_status, warnings_for


def _status(**override: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "consultation_id": "c-42",
        "recording_id": "r-1",
        "duration_s": 3725.4,
        "paused": False,
        "participants": [{"id": "c1", "role": "clinician", "slot": 0}],
        "tracks": [
            {
                "participant": "c1",
                "kind": "audio",
                "active": True,
                "packets": 10,
                "frames": 50,
                "clock": "sender_reports",
                "seconds_since_packet": 0.1,
            },
            {
                "participant": "c1",
                "kind": "video",
                "active": True,
                "packets": 10,
                "frames": 30,
                "clock": "sender_reports",
                "seconds_since_packet": 0.1,
            },
        ],
        "bytes_recorded": 25_000_000,
        "bytes_uploaded": 16_000_000,
        "upload_alarm": False,
        "last_error": None,
    }
    status.update(override)
    return status


def _text(status: dict[str, Any]) -> str:
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
    silent = _status()["tracks"][:1]
    silent[0] = {**silent[0], "seconds_since_packet": 7.2}
    text = _text(_status(paused=True, upload_alarm=True, last_error="store down", tracks=silent))
    assert "PAUSED" in text
    assert "! privacy pause" in text
    assert "! object store failing" in text
    assert "! last storage error: store down" in text
    assert "! no audio from c1 for 7 s" in text


def test_empty_recording() -> None:
    status = _status(participants=[], tracks=[], bytes_recorded=0, bytes_uploaded=0)
    assert "(nobody yet)" in _text(status)
    assert warnings_for(status) == []
