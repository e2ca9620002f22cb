"""Shared helpers for the fault suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], bool], limit: float, what: str, *, poll: float = 0.1
) -> float:
    """Poll a condition owned by another thread or process; returns the seconds it took."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > limit:
            raise AssertionError(f"{what}: not reached within {limit}s")
        await asyncio.sleep(poll)
    return time.monotonic() - began
