"""Place every received frame on one wall-clock timeline.

aiortc starts every track's pts at 0 at its own first frame and treats any backwards RTP
timestamp as a wrap (+13 h), so muxing its pts gives a permanent A/V offset. Here each
stream extends its 32-bit RTP timestamps properly and maps them to local wall-clock time:

* With RTCP sender reports, an RTP timestamp maps to the sender's NTP clock (capture time).
  All streams of one publisher share that clock, so lip sync is exact; the publisher's clock
  is tied to ours by the smallest observed ``arrival - capture`` over all its packets (the
  least-delayed packet bounds the network delay from below).
* Without them, each stream is mapped on its own by the smallest ``arrival - rtp/rate``.

Arrival times are taken when a packet reaches the receiver, before aiortc's jitter buffer,
so the buffer's own delay (four packets for audio) never shifts a stream.
"""

from __future__ import annotations

import structlog

from bot.timeline import Timeline

log = structlog.get_logger("bot.rtc.clock")

NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""

STEP_THRESHOLD = 30.0
"""A mapping that moves later by more than this for a whole window is a clock step (a new
RTP base on the same stream). Smaller delays are a starved or congested path: its frames
arrive late and become a gap, rather than moving the stream out of sync."""

STEP_WINDOW = 3.0

SENDER_REPORT_WINDOW = 10
"""Recent sender reports considered (about 10 s at one report a second)."""
MAPPING_MOVE_LOGGED = 0.005
"""A stream's capture-time mapping moving by more than this is logged (a lip-sync step)."""


def ntp_to_unix(ntp: int) -> float:
    """Convert a 64-bit NTP timestamp (32.32 fixed point) to Unix seconds."""
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFF_FFFF) / 2**32


class RtpUnwrapper:
    """Extend 32-bit RTP timestamps to unbounded integers.

    A step back is a step back (reordering, a publisher's clock correction), and only a
    step of more than half the range counts as a wrap.
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def peek(self, timestamp: int) -> int:
        if self._last is None:
            return timestamp
        delta = ((timestamp - self._last + 2**31) & 0xFFFF_FFFF) - 2**31
        return self._last + delta

    def extend(self, timestamp: int) -> int:
        extended = self.peek(timestamp)
        self._last = extended
        return extended


class MinOffset:
    """Smallest ``arrival - media time`` seen, re-anchored when the source clock steps.

    The minimum follows any decrease at once; an increase (a publisher restarting with a
    new RTP base, or its wall clock stepping) is accepted only when every sample for
    ``STEP_WINDOW`` seconds sits more than ``STEP_THRESHOLD`` above it.
    """

    def __init__(self) -> None:
        self.value: float | None = None
        self._window_start = 0.0
        self._window_min = float("inf")

    def observe(self, offset: float, arrival: float) -> None:
        if self.value is None or offset < self.value:
            self.value = offset
            self._window_min = float("inf")
            self._window_start = arrival
            return
        if offset - self.value <= STEP_THRESHOLD:
            self._window_min = float("inf")
            self._window_start = arrival
            return
        self._window_min = min(self._window_min, offset)
        if arrival - self._window_start >= STEP_WINDOW:
            log.warning("clock.step", step_s=round(self._window_min - self.value, 3))
            self.value = self._window_min
            self._window_min = float("inf")
            self._window_start = arrival


class ClockDomain:
    """One publisher's sender clock, shared by all the streams of its session."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._streams: list[StreamClock] = []

    def attach(self, stream: StreamClock) -> None:
        stream.domain = self
        self._streams.append(stream)

    def offset(self) -> float | None:
        """Local wall time minus the sender's clock: the smallest network delay seen.

        Derived afresh from every stream's least-delayed packet and least-delayed report,
        so a better report never leaves behind an estimate made with a worse one.
        """
        delays = [d for s in self._streams if (d := s.min_delay()) is not None]
        return min(delays, default=None)


class StreamClock:
    """Maps one received stream's RTP timestamps to seconds on the recording timeline.

    ``domain`` may be set after packets start: the receiver is hooked before the SFU sees
    our answer, but which publisher it carries is known only from the SFU's response.
    """

    def __init__(self, clock_rate: int, domain: ClockDomain | None, timeline: Timeline) -> None:
        self.clock_rate = clock_rate
        self.domain: ClockDomain | None = None
        if domain is not None:
            domain.attach(self)
        self._timeline = timeline
        self._packets = RtpUnwrapper()
        self._frames = RtpUnwrapper()
        self._arrival = MinOffset()
        """Smallest ``arrival - rtp/rate``."""
        self._sender_offset: float | None = None
        """Smallest ``sender time - rtp/rate`` over ``_reports``: the capture-time mapping."""
        self._reports: list[tuple[float, int]] = []
        self.ssrc: int | None = None
        self.sender_reports = 0

    @property
    def synced(self) -> bool:
        """True once a sender report ties this stream to its publisher's clock."""
        return self._sender_offset is not None

    def min_delay(self) -> float | None:
        """Smallest ``arrival - capture`` of this stream (sender clock to local clock)."""
        if self._sender_offset is None or self._arrival.value is None:
            return None
        return self._arrival.value - self._sender_offset

    def on_packet(self, ssrc: int, timestamp: int, arrival: float) -> None:
        if self.ssrc is not None and ssrc != self.ssrc:
            log.info("clock.ssrc_changed", clock_rate=self.clock_rate, old=self.ssrc, new=ssrc)
            self._sender_offset = None
            self._reports.clear()
        self.ssrc = ssrc
        rtp = self._packets.extend(timestamp)
        self._arrival.observe(arrival - rtp / self.clock_rate, arrival)

    def on_sender_report(self, ssrc: int, ntp: int, timestamp: int) -> None:
        """Take a sender report; the mapping is the least-delayed of the recent ones.

        A sender that stamps a report with the time it sent its last packet (aiortc does)
        is late by its send jitter; the earliest mapping among recent reports is the one
        closest to capture time. A report that disagrees with its predecessor by more
        than a second (or 5% of the time between them) means a restarted sender or a
        stepped clock, not jitter: the history starts again.
        """
        if ntp == 0 or ssrc != self.ssrc:
            return  # no media yet, or an SR from a sender that never started (ntp 0)
        seconds, rtp = ntp_to_unix(ntp), self._packets.peek(timestamp)
        if self._reports:
            previous_seconds, previous_rtp = self._reports[-1]
            elapsed = seconds - previous_seconds
            advanced = (rtp - previous_rtp) / self.clock_rate
            if elapsed <= 0 or abs(advanced - elapsed) > max(1.0, 0.05 * elapsed):
                log.warning("clock.sender_report_outlier", drift_s=round(advanced - elapsed, 3))
                self._reports.clear()
        self._reports.append((seconds, rtp))
        del self._reports[:-SENDER_REPORT_WINDOW]
        previous = self._sender_offset
        self._sender_offset = min(s - r / self.clock_rate for s, r in self._reports)
        self.sender_reports += 1
        if previous is not None and abs(self._sender_offset - previous) > MAPPING_MOVE_LOGGED:
            # Every frame of this stream moves by as much against its publisher's other
            # streams: the one event that explains a lip-sync step in a recording.
            log.info(
                "clock.sender_mapping_moved",
                session=self.domain.name if self.domain is not None else None,
                clock_rate=self.clock_rate,
                moved_ms=round((self._sender_offset - previous) * 1000, 1),
            )

    def frame_timestamp(self, timestamp: int) -> int:
        """Extend the RTP timestamp of a complete frame; used as the decoded frame's pts."""
        return self._frames.extend(timestamp)

    def timeline_seconds(self, rtp: int) -> float | None:
        """Where a frame with this extended RTP timestamp belongs; None before any packet."""
        media = rtp / self.clock_rate
        offset = self.domain.offset() if self.domain is not None else None
        if self._sender_offset is not None and offset is not None:
            local = media + self._sender_offset + offset
        elif self._arrival.value is not None:
            local = media + self._arrival.value
        else:
            return None
        return self._timeline.at(local)
