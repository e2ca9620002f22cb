"""Gaps on the timeline: every stretch where a track had no media, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Gap:
    participant: str
    kind: str
    start: float
    end: float
    reason: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = round(self.start, 3)
        data["end"] = round(self.end, 3)
        data["duration"] = round(self.duration, 3)
        return data


MIN_GAP_SECONDS = 0.2
"""Shorter holes (a lost packet or two) are counted, not listed."""


class GapTracker:
    """Turns a per-tick "had media?" signal into gap intervals for one track."""

    def __init__(self, participant: str, kind: str) -> None:
        self.participant = participant
        self.kind = kind
        self.gaps: list[Gap] = []
        self.short_gaps = 0
        self._open: Gap | None = None
        self._ever_had_media = False

    def update(self, t: float, has_media: bool, withheld: str | None = None) -> None:
        """``withheld``: why media is kept out here (``bot.media.withholding``), if it is."""
        if has_media and withheld is None:
            self._ever_had_media = True
            self._close(t)
            return
        if withheld is not None:
            reason = withheld
        elif self._ever_had_media:
            reason = "no media (loss, mute or participant left)"
        else:
            reason = "no media yet (late join or connecting)"
        if self._open is not None and self._open.reason != reason:
            self._close(t)
        if self._open is None:
            self._open = Gap(self.participant, self.kind, t, t, reason)
        self._open.end = t

    def finish(self, t: float) -> list[Gap]:
        if self._open is not None:
            self._open.end = t
        self._close(t)
        return self.gaps

    def _close(self, t: float) -> None:
        if self._open is not None:
            self._open.end = t
            self._open.participant = self.participant  # who holds the cell when it ends
            if self._open.duration >= MIN_GAP_SECONDS:
                self.gaps.append(self._open)
            else:
                self.short_gaps += 1
            self._open = None
