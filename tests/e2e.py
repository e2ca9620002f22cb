"""Shared helpers for end-to-end tests: a local call, the recorder's settings, file checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from testbed.stack import LocalCall

from bot.config import Participant, RealtimeSettings, RecordingSettings, Settings, StorageSettings
from bot.media.layout import Rect, grid


def recorder_settings(
    call: LocalCall,
    output_dir: Path,
    participants: tuple[Participant, ...] | None = None,
    storage: StorageSettings | None = None,
    **recording: Any,
) -> Settings:
    """The recorder pointed at a local call; verified files land in ``output_dir``."""
    return Settings(
        realtime=RealtimeSettings(
            base_url=call.base_url, app_id=call.app_id, app_secret=call.app_secret, ice_servers=()
        ),
        recording=RecordingSettings(
            consultation_id=recording.pop("consultation_id", "c-e2e"),
            participants=participants if participants is not None else tuple(call.participants),
            **recording,
        ),
        storage=storage
        or StorageSettings(spool_dir=output_dir / "spool", local_dir=output_dir / "verified"),
    )


def slots(count: int, width: int = 1280, height: int = 720) -> list[Rect]:
    return grid(count, width, height)


def ffprobe(path: Path) -> dict[str, Any]:
    """Debian's ffprobe, not the FFmpeg inside PyAV: an independent reading of the file."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data
