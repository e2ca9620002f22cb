"""Keeps the recording's WebRTC transport alive: probes it, rebuilds it, pulls again.

Absent media proves nothing (Cloudflare does not signal a publisher leaving), and aiortc
declares a dead path only when ICE consent expires, about 30 s later, with no ICE restart.
So the supervisor probes the path with a STUN check every half second and, when no
answer comes for ``realtime.transport_dead_after`` seconds, opens a new session that
pulls the same tracks while the old path is still given the chance to come back. Tracks
whose pull failed in a way that can pass (a publisher still connecting) are asked for
again with backoff. The decisions (``PathWatch``, ``tracks_to_repull``, the backoffs) are
plain objects so that they are tested without a network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

import structlog

from bot.config import Participant, Settings, TrackRef
from bot.realtime import RealtimeClient, RealtimeError, TrackResult
from bot.recording.roster import Roster
from bot.rtc.buffers import FrameOpener
from bot.rtc.subscriber import FailedTrack, FrameSink, PulledTrack, Subscriber
from bot.rtc.tracks import TrackArchiver
from bot.timeline import Timeline

log = structlog.get_logger("bot.recording")

PROBE_INTERVAL = 0.5
REBUILD_BACKOFF_FIRST = 0.25
REBUILD_BACKOFF_MAX = 2.0
REPULL_FIRST = 1.0
REPULL_BACKOFF_MAX = 10.0


class Transport(Protocol):
    """What the supervisor needs of a subscriber (``bot.rtc.Subscriber``)."""

    connected: asyncio.Event
    failed: asyncio.Event
    tracks: list[PulledTrack]
    failed_tracks: dict[TrackRef, FailedTrack]

    async def open(self) -> str: ...
    async def pull(self, participant: Participant, slot: int) -> list[TrackResult]: ...
    async def probe(self, answer_within: float = 1.0) -> bool | None: ...
    async def close(self) -> None: ...


T = TypeVar("T", bound=Transport)


class PathWatch:
    """Decides from probe answers when a path is dead (``transport_dead_after`` silent).

    An answer, an unknown state (never connected) or a starved event loop (the check was
    answered but read late: that proves nothing about the path, and a rebuild would only
    add load) all count as alive.
    """

    def __init__(self, dead_after: float, now: float) -> None:
        self._dead_after = dead_after
        self._last_alive = now

    def dead(self, *, asked: float, now: float, alive: bool | None, failed: bool) -> bool:
        starved = now - asked > 3 * PROBE_INTERVAL
        if alive or starved or (alive is None and not failed):
            self._last_alive = now
            return False
        return failed or now - self._last_alive >= self._dead_after

    def silent_for(self, now: float) -> float:
        return now - self._last_alive

    def restart(self, now: float) -> None:
        self._last_alive = now


def tracks_to_repull(failed: Mapping[TrackRef, FailedTrack]) -> dict[str, list[TrackRef]]:
    """Per participant id, the failed tracks worth asking for again."""
    waiting: dict[str, list[TrackRef]] = {}
    for ref, failure in failed.items():
        if failure.can_pass:
            waiting.setdefault(failure.participant.id, []).append(ref)
    return waiting


def rebuild_delay(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th (0-based) failed rebuild."""
    return min(REBUILD_BACKOFF_MAX, REBUILD_BACKOFF_FIRST * 2.0**attempt)


class TransportSupervisor(Generic[T]):
    """Owns the current transport; the recorder reads it through ``current``."""

    def __init__(
        self,
        new_transport: Callable[[], T],
        roster: Roster,
        *,
        dead_after: float,
        connect_within: float,
        stopping: Callable[[], bool],
    ) -> None:
        self._new_transport = new_transport
        self._roster = roster
        self._dead_after = dead_after
        self._connect_within = connect_within
        self._stopping = stopping
        self.current = new_transport()
        self.retired: list[PulledTrack] = []
        """Tracks of transports replaced after a failure (for the manifest)."""
        self.rebuilds = 0

    async def watch(self) -> None:
        """Probe the path every ``PROBE_INTERVAL``; rebuild when it stays dead."""
        watch = PathWatch(self._dead_after, time.monotonic())
        while True:
            asked = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL)
            transport = self.current
            alive = await transport.probe(answer_within=PROBE_INTERVAL)
            now = time.monotonic()
            if not watch.dead(asked=asked, now=now, alive=alive, failed=transport.failed.is_set()):
                continue
            log.warning("recorder.transport_dead", silent_s=round(watch.silent_for(now), 2))
            await self.rebuild()
            watch.restart(time.monotonic())

    async def repull(self) -> None:
        """Ask again, 1 s, 2 s, 4 s ... (at most every ``REPULL_BACKOFF_MAX`` s) apart, for
        tracks that failed in a way that can pass; each joins the timeline where it
        arrives, its cell a reported gap until then."""
        delay = REPULL_FIRST
        while True:
            await asyncio.sleep(delay)
            transport = self.current
            waiting = tracks_to_repull(transport.failed_tracks)
            if not waiting:
                delay = REPULL_FIRST
                continue
            for refs in waiting.values():
                await self._pull_again(transport, refs)
            delay = min(2 * delay, REPULL_BACKOFF_MAX)

    async def _pull_again(self, transport: T, refs: list[TrackRef]) -> None:
        first = transport.failed_tracks[refs[0]]
        participant = first.participant
        retry = participant.model_copy(update={"tracks": tuple(refs)})
        try:
            failures = await transport.pull(retry, first.slot)
        except RealtimeError as exc:
            log.info("recorder.repull_failed", participant=participant.id, error=str(exc))
            return
        log.info(
            "recorder.tracks_repulled",
            participant=participant.id,
            pulled=len(refs) - len(failures),
            still_missing=len(failures),
        )

    async def rebuild(self) -> None:
        """A new session pulling the same tracks; the old path is probed between attempts
        and kept if it comes back first."""
        old = self.current
        began = time.monotonic()
        attempt = 0
        while not self._stopping():
            if not old.failed.is_set() and await old.probe(answer_within=PROBE_INTERVAL):
                log.info("recorder.transport_recovered", after_s=round(time.monotonic() - began, 2))
                return
            new = await self._try_new_transport(attempt)
            if new is None:
                await asyncio.sleep(rebuild_delay(attempt))
                attempt += 1
                continue
            self.current = new
            self.retired += old.tracks
            self.rebuilds += 1
            await old.close()
            log.info(
                "recorder.transport_rebuilt",
                after_s=round(time.monotonic() - began, 2),
                attempts=attempt + 1,
            )
            return

    async def _try_new_transport(self, attempt: int) -> T | None:
        new = self._new_transport()
        try:
            await new.open()
            for participant, slot in self._roster.present():
                await new.pull(participant, slot)
            async with asyncio.timeout(self._connect_within):
                await new.connected.wait()
        except (RealtimeError, TimeoutError) as exc:
            await new.close()
            log.warning("recorder.rebuild_failed", attempt=attempt + 1, error=str(exc))
            return None
        return new


def subscriber_supervisor(
    settings: Settings,
    client: RealtimeClient,
    roster: Roster,
    timeline: Timeline,
    *,
    submit: FrameSink,
    stopping: Callable[[], bool],
    open_frame: FrameOpener | None = None,
    archiver: TrackArchiver | None = None,
) -> TransportSupervisor[Subscriber]:
    """The recorder's supervisor: each transport a ``Subscriber`` on the one timeline."""
    realtime = settings.realtime

    def new_subscriber() -> Subscriber:
        return Subscriber(
            client,
            submit,
            timeline=timeline,
            ice_servers=realtime.ice_servers,
            simulcast_layer=settings.recording.simulcast_layer or None,
            open_frame=open_frame,
            archiver=archiver,
            decode=settings.recording.mode != "tracks",
        )

    return TransportSupervisor(
        new_subscriber,
        roster,
        dead_after=realtime.transport_dead_after,
        connect_within=realtime.request_timeout,
        stopping=stopping,
    )
