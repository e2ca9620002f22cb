"""When a recording stops, and which stops are failures.

Kept apart from the loop that asks so that every rule can be tested in microseconds:
the recorder observes (``StopSignals``) a few times a second and asks ``StopPolicy``;
the answer is a stop reason, which ``failure_of`` turns into an exit code and the line a
person reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bot.config import RecordingSettings
from bot.exitcodes import ExitCode
from bot.rtc.subscriber import Subscriber
from bot.storage import UploadStatus

FAILED_STOPS: dict[str, tuple[ExitCode, str]] = {
    "connect_timeout": (
        ExitCode.REALTIME,
        "WebRTC did not connect within recording.connect_timeout: check that UDP to "
        "Cloudflare (or the ICE servers in realtime.ice_servers) is reachable",
    ),
    "media_failed": (ExitCode.MEDIA, "the media thread failed; see media.thread_failed"),
    "encrypted": (
        ExitCode.REALTIME,
        "the media is end-to-end encrypted and this recorder cannot open it (not a member "
        "of the call's MLS group within e2ee.join_timeout): admit it through the control "
        "API's /v1/e2ee routes; nothing encrypted was decoded into the recording",
    ),
    "disk_limit": (
        ExitCode.STORAGE,
        "the spool reached its disk limit (storage.max_spool_bytes or storage.min_free_bytes); "
        "the recording up to that point is kept",
    ),
}
"""Stop reasons that are failures, with their exit code and the line a person reads."""


@dataclass(frozen=True)
class StopSignals:
    """What the recorder sees at one instant."""

    elapsed_s: float
    """Timeline seconds so far."""
    silent_for_s: float
    """Seconds since the last media packet of any track (``elapsed_s`` if none yet)."""
    has_tracks: bool
    connected: bool
    pipeline_alive: bool
    disk_limit: bool
    unreadable_for_s: float = 0.0
    """Seconds every frame has been ciphertext this recorder cannot open."""

    @classmethod
    def of(
        cls,
        transport: Subscriber,
        elapsed: float,
        *,
        media_alive: bool,
        upload: UploadStatus | None,
        wall_clock: Callable[[], float],
        unreadable_for_s: float = 0.0,
    ) -> StopSignals:
        """``elapsed``: timeline seconds; ``media_alive``: the media thread runs (or
        there is none: the track archive alone)."""
        last = transport.last_media()
        return cls(
            elapsed_s=elapsed,
            silent_for_s=wall_clock() - last if last else elapsed,
            has_tracks=bool(transport.tracks),
            connected=transport.connected.is_set(),
            pipeline_alive=media_alive,
            disk_limit=bool(upload and upload.disk_limit),
            unreadable_for_s=unreadable_for_s,
        )


class StopPolicy:
    def __init__(self, settings: RecordingSettings, e2ee_join_timeout: float = 30.0) -> None:
        self._join_timeout = e2ee_join_timeout
        self._max_duration = settings.max_duration
        self._silence_timeout = settings.silence_timeout
        self._connect_timeout = settings.connect_timeout

    def reason(self, seen: StopSignals) -> str | None:
        """The reason to stop now, or None to go on; the first rule that holds wins."""
        if seen.elapsed_s >= self._max_duration:
            return "duration_limit"
        if seen.silent_for_s >= self._silence_timeout:
            return "silence_timeout"
        if seen.has_tracks and not seen.connected and seen.elapsed_s >= self._connect_timeout:
            return "connect_timeout"
        if not seen.pipeline_alive:
            return "media_failed"
        if seen.disk_limit:
            return "disk_limit"
        if seen.unreadable_for_s >= self._join_timeout:
            return "encrypted"
        return None

    def time_left(self, elapsed_s: float) -> float:
        """Seconds until the duration limit."""
        return self._max_duration - elapsed_s


async def wait_for_stop(
    policy: StopPolicy,
    observe: Callable[[], StopSignals],
    stop: asyncio.Event,
    requested: Callable[[], str],
    *,
    interval: float,
) -> str:
    """Ask the policy every ``interval`` seconds until it or ``stop`` says to end; the
    reason (``requested()`` when ``stop`` was set: a signal, the API)."""
    while not stop.is_set():
        seen = observe()
        reason = policy.reason(seen)
        if reason is not None:
            return reason
        with contextlib.suppress(TimeoutError):
            wait = min(interval, policy.time_left(seen.elapsed_s))
            async with asyncio.timeout(wait):
                await stop.wait()
    return requested()


def failure_of(reason: str) -> tuple[ExitCode, str] | None:
    """The exit code and message of a stop reason that is a failure; None for a normal end."""
    return FAILED_STOPS.get(reason)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop("sigint" | "sigterm")`` while inside; the loop's
    previous handling comes back after. Where signals cannot be handled (not the main
    thread, Windows) nothing is installed."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop, sig.name.lower())
    try:
        yield
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
