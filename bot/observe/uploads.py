"""The upload's progress as audit events: each stored part and each store outage.

The uploader is not audit-aware; polling its non-blocking status keeps it so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bot.custody.audit import AuditLog
from bot.storage import UploadStatus


async def follow_uploads(
    audit: AuditLog, status: Callable[[], UploadStatus | None], interval: float = 1.0
) -> None:
    """Runs until cancelled; the final parts are audited with the verification, by the
    recording's evidence when it seals the manifest."""
    parts, alarm = 0, False
    while True:
        upload = status()
        if upload is not None:
            if upload.parts > parts:
                audit.record(
                    "upload.parts_stored",
                    parts=upload.parts,
                    bytes_uploaded=upload.bytes_uploaded,
                )
                parts = upload.parts
            if upload.alarm != alarm:
                alarm = upload.alarm
                audit.record(
                    "upload.store_failing" if alarm else "upload.store_recovered",
                    errors=upload.errors,
                )
        await asyncio.sleep(interval)
