"""The recording's one timeline: second 0 in wall-clock time, and the clock that reads it.

Everything placed on the recording (RTP clocks, the media thread, gaps, stop decisions)
measures from this one origin; it is made once by the recorder and handed to the others,
so no two parts can disagree about when the recording began. The wall clock is injectable
so that the recorder's decisions can be tested without waiting for real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timeline:
    origin_wall: float
    """Unix time of timeline second 0."""
    wall_clock: Callable[[], float] = field(default=time.time, compare=False)

    @classmethod
    def starting_now(cls, wall_clock: Callable[[], float] = time.time) -> Timeline:
        return cls(wall_clock(), wall_clock)

    def now(self) -> float:
        """Seconds since the origin, by the wall clock."""
        return self.wall_clock() - self.origin_wall

    def at(self, wall: float) -> float:
        """Timeline seconds of the Unix time ``wall``."""
        return wall - self.origin_wall
