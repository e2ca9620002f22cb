"""Stopping background tasks: even one that lost its cancellation ends."""

import asyncio

import pytest
import structlog

from bot.tasks import stop_task


async def test_a_cancellation_lost_in_wait_for_is_asked_again() -> None:
    """Python 3.11's ``wait_for`` loses a cancellation that comes in the turn its future
    completes (a probe answered as the recorder stops); the loop around it goes on.
    ``stop_task`` must still end it, not wait for ever."""
    loop = asyncio.get_running_loop()
    probes: list[asyncio.Future[bool]] = []
    probing = asyncio.Event()

    async def watchdog() -> None:
        while True:
            probes.append(loop.create_future())
            probing.set()
            await asyncio.wait_for(probes[-1], 5)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(watchdog(), name="watchdog")
    await probing.wait()
    await asyncio.sleep(0)  # into wait_for's own wait
    probes[-1].set_result(True)  # the answer and the stop in one turn
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(5):
            assert await stop_task(task) is None
    assert task.cancelled()
    assert [e["event"] for e in logs] == ["task.cancellation_lost"], logs


async def test_a_task_that_failed_is_reported_not_raised() -> None:
    async def crashes() -> None:
        raise ValueError("api changed")

    task = asyncio.create_task(crashes(), name="crashes")
    await asyncio.sleep(0)
    with structlog.testing.capture_logs() as logs:
        error = await stop_task(task)
    assert isinstance(error, ValueError)
    assert logs[0]["event"] == "task.failed" and "api changed" in logs[0]["error"]


@pytest.mark.parametrize("ended", [True, False])
async def test_a_task_that_ends_or_is_cancelled_returns_nothing(ended: bool) -> None:
    task = asyncio.create_task(asyncio.sleep(0 if ended else 60))
    await asyncio.sleep(0.01)
    assert task.done() is ended
    assert await stop_task(task) is None
