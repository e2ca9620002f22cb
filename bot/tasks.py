"""Background tasks that end visibly: stopped, awaited, and their failure logged.

A task that is only cancelled is never awaited, so an exception it raised before (a
watchdog that crashed on an API change) is never seen; and one still running when its
owner closes keeps a reference to what is being torn down.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

log = structlog.get_logger("bot.tasks")


async def stop_task(task: asyncio.Task[None]) -> BaseException | None:
    """Cancel ``task`` and wait for it; returns (and logs) the exception it died of."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception as exc:  # its failure, not ours: reported, not raised
            log.error("task.failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}")
            return exc
    return None
