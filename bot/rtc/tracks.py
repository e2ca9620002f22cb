"""What the recorder knows of each track it asked for: a track it receives, from pull to
end (``PulledTrack``), or one it cannot record now, and why (``FailedTrack``).

Kept apart from the subscriber, which creates them, because the recorder reads them too:
for its status, its re-pulls and the manifest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bot.config import Participant, TrackRef
from bot.rtc.buffers import EncodedSink
from bot.rtc.clock import StreamClock
from bot.rtc.receiver_tap import ReceiverTap
from bot.rtc.track_status import TrackStatus

log = structlog.get_logger("bot.rtc")

MAX_SIZES = 64
"""Picture sizes kept per track: a sender adapting all the time must not grow it forever."""
REPULL_CODES = frozenset({"not_found_track_error", "empty_track_error"})
"""Per-track errors that can pass: the publisher's track is not there yet, or has no
media yet (a publisher still connecting, or reconnecting)."""


@dataclass
class PulledTrack:
    """One remote track on our session, from pull to end."""

    ref: TrackRef
    participant: Participant
    slot: int
    mid: str
    kind: str
    clock: StreamClock
    receiver: Any
    tap: ReceiverTap
    codec: str | None = None
    active: bool = True
    frames: int = 0
    packets: int = 0
    last_packet: float = 0.0
    last_frame: float = 0.0
    last_keyframe_request: float = 0.0
    foreign_reported: bool = False
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
    """``(timeline seconds, width, height)`` at the first picture and at every change of
    size (a simulcast layer switch, the sender's own adaptation), at most ``MAX_SIZES``."""
    reader: asyncio.Task[None] | None = field(default=None, repr=False)

    def status(self, now: float) -> TrackStatus:
        """This track as the outside sees it at Unix time ``now``."""
        return TrackStatus(
            participant=self.participant.id,
            kind=self.kind,
            mid=self.mid,
            codec=self.codec,
            active=self.active,
            packets=self.packets,
            rtx_packets=self.tap.rtx_packets if self.active else None,
            nack_retries=self.tap.nack_retries if self.active else None,
            frames=self.frames,
            sizes=tuple(self.sizes),
            clock="sender_reports" if self.clock.synced else "arrival",
            sender_reports=self.clock.sender_reports,
            seconds_since_packet=round(now - self.last_packet, 3) if self.packets else None,
        )

    async def packets_lost(self) -> int | None:
        """Cumulative RTP packets lost, as aiortc's receiver statistics count them; None
        when they cannot be read (statistics are best effort)."""
        try:
            report: Any = await self.receiver.getStats()
        except Exception as exc:  # never fail a status read on statistics
            log.debug("track.stats_failed", mid=self.mid, error=str(exc))
            return None
        lost = [s.packetsLost for s in report.values() if getattr(s, "type", "") == "inbound-rtp"]
        return int(sum(lost)) if lost else None


@dataclass(frozen=True)
class FailedTrack:
    """A track that cannot be recorded now: whose, where it would go, and why."""

    participant: Participant
    slot: int
    code: str
    reason: str | None
    """Our own explanation; the SFU's error text is left out: it may quote the app's
    track names."""

    @property
    def can_pass(self) -> bool:
        """Worth pulling again while recording (``REPULL_CODES``)."""
        return self.code in REPULL_CODES

    def report(self) -> dict[str, str | None]:
        """Plain data for the result and the manifest."""
        return {"participant": self.participant.id, "errorCode": self.code, "reason": self.reason}


class TrackArchiver(Protocol):
    """Where received tracks are stored as they arrived (``bot.recording.archive``)."""

    def begin(self, track: PulledTrack) -> EncodedSink | None:
        """A track starts: the sink for its encoded frames (None: not archived)."""

    def end(self, track: PulledTrack) -> None:
        """A track was dropped: its file is complete (no frame comes any more)."""
