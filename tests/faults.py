"""Shared helpers for the fault suite: a live recording against LocalS3 and figures from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bot.config import StorageSettings
from bot.testbed.s3 import LocalS3

SMALL_PART = 64 * 1024
"""Parts this small let a short test recording span many parts. R2 wants >= 5 MiB; SeaweedFS
does not enforce it, and the uploader's logic does not depend on the size."""


def small_part_settings(s3: LocalS3, endpoint_url: str, **values: Any) -> StorageSettings:
    """LocalS3 settings through ``endpoint_url`` with ``SMALL_PART`` parts (not validated:
    5 MiB is the configured minimum)."""
    settings = s3.storage_settings(endpoint_url=endpoint_url, **values)
    return settings.model_copy(update={"part_size": SMALL_PART})


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
