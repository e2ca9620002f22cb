"""Background tasks that end visibly: stopped, awaited, and their failure logged.

A task that is only cancelled is never awaited, so an exception it raised before (a
watchdog that crashed on an API change) is never seen; and one still running when its
owner closes keeps a reference to what is being torn down.

A cancellation can be lost: Python 3.11's ``asyncio.wait_for`` returns the result when
the awaited thing completes in the same turn as the cancellation, and a cancelled loop
goes on. The transport watchdog probes the ICE path that way every few seconds; losing
its cancellation keeps ``stop_task`` waiting for ever and the recording from stopping,
most likely the recordings that never stopped in CI (a stuck selftest still composing
live, long after its stop). So ``stop_task`` asks again until the task has ended, and the
recorder's own code waits with ``asyncio.timeout``, which keeps the cancellation.
"""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("bot.tasks")

CANCEL_AGAIN_AFTER_S = 0.5
"""A task still running this long after being cancelled lost the cancellation: ask again."""


async def stop_task(task: asyncio.Task[None]) -> BaseException | None:
    """Cancel ``task`` and wait for it to end, cancelling it again while it goes on;
    returns (and logs) the exception it died of."""
    task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_AFTER_S)
        if not task.done():
            log.warning("task.cancellation_lost", task=task.get_name())
            task.cancel()
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is None:
        return None
    log.error("task.failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}")
    return exc
