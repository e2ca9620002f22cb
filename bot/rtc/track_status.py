"""One pulled track as the outside sees it: an immutable snapshot.

The subscriber makes these (``Subscriber.track_status``); status, metrics, the terminal
panel and the manifest's ``sync.tracks`` read them, and none of those touch aiortc.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class TrackStatus:
    participant: str
    kind: str
    mid: str
    codec: str | None
    active: bool
    packets: int
    rtx_packets: int | None
    """Retransmissions received on the RTX SSRC (None once the track is closed)."""
    nack_retries: int | None
    frames: int
    sizes: tuple[tuple[float, int, int], ...]
    """``(timeline seconds, width, height)`` at the first picture and at every change."""
    clock: Literal["sender_reports", "arrival"]
    """What places the track on the timeline: RTCP sender reports, or packet arrival."""
    sender_reports: int
    seconds_since_packet: float | None

    def as_dict(self) -> dict[str, object]:
        """The manifest's ``sync.tracks[]`` entry (sizes as lists, as JSON has them)."""
        entry = asdict(self)
        entry["sizes"] = [list(size) for size in self.sizes]
        return entry
