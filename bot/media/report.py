"""What the media thread reports, and the rate of its audio.

Apart from the media thread itself so that the recorder, its status and the manifest
can read them without loading the compositor, mixer and encoders (numpy among them,
about 20 MB): a recording kept only as tracks (``recording.mode = "tracks"``) never
loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.media.gaps import Gap

if TYPE_CHECKING:
    from bot.media.layout import LayoutReport

SAMPLE_RATE = 48_000
"""The rate of every audio sample the recorder mixes, writes and reports."""


@dataclass(frozen=True)
class SlotInfo:
    """One participant's place in the output: a grid cell and a speaker track."""

    participant_id: str
    role: str


@dataclass
class MediaReport:
    """What the media thread did, for the manifest and the summary line."""

    duration: float = 0.0
    video_frames: int = 0
    audio_samples: int = 0
    video_frames_dropped_in_queue: int = 0
    video_frames_repeated: int = 0
    """Output frames that repeated the previous picture because the thread was behind."""
    audio_frames_dropped_in_queue: int = 0
    gaps: list[Gap] = field(default_factory=list)
    slots: list[dict[str, Any]] = field(default_factory=list)
    layout: LayoutReport | None = None
