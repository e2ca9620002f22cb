"""``bot recover``: finish every upload a crash left behind, and abort stale ones.

Each orphaned spool (no live process holds its lock) is resumed with ListParts as the
authority, completed and verified like a normal recording; its manifest is the
recorder's last draft, marked ``recovered``. Multipart uploads under this recorder's key
prefix that no journal knows and that are older than ``stale_upload_age`` are aborted, so
they stop costing storage.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from bot.config import ConfigError, Settings, StorageSettings
from bot.exitcodes import ExitCode
from bot.manifest import Manifest
from bot.storage.errors import StorageError
from bot.storage.keys import key_prefix
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore, open_store
from bot.storage.uploader import Uploader

log = structlog.get_logger("bot.storage.recover")


async def recover_all(settings: Settings) -> ExitCode:
    """Recover every orphaned spool; OK only if all of them end verified."""
    try:
        return await asyncio.to_thread(recover_spools, settings.storage)
    except ConfigError as exc:
        log.error("recover_config_error", error=str(exc))
        return ExitCode.CONFIG


def recover_spools(settings: StorageSettings) -> ExitCode:
    store = open_store(settings)
    known_uploads: set[str] = set()
    failures = 0
    for spool in Spool.scan(settings.spool_dir):
        journal = spool.journal()
        if journal is not None and journal.upload_id is not None:
            known_uploads.add(journal.upload_id)
        if not spool.try_lock():
            log.info("recover_skip_live", recording_id=spool.info.recording_id)
            continue
        if spool.media_size() == 0:
            log.warning("recover_skip_empty", recording_id=spool.info.recording_id)
            spool.unlock()
            continue
        try:
            result = Uploader(settings, spool, store).finish(_manifest_for(spool))
        except StorageError as exc:
            failures += 1
            spool.unlock()
            log.error(
                "recover_failed",
                recording_id=spool.info.recording_id,
                kind=exc.kind,
                error=str(exc),
            )
            continue
        log.info(
            "recovered",
            recording_id=spool.info.recording_id,
            object_key=result.object_key,
            size=result.size,
        )
    try:
        _abort_stale(settings, store, known_uploads)
    except StorageError as exc:
        failures += 1
        log.error("recover_abort_stale_failed", kind=exc.kind, error=str(exc))
    return ExitCode.OK if failures == 0 else ExitCode.STORAGE


def _manifest_for(spool: Spool) -> Manifest:
    draft = spool.manifest_draft()
    if draft is None:
        draft = Manifest(
            consultation_id=spool.info.consultation_id,
            recording_id=spool.info.recording_id,
            started_at=spool.info.created_at,
        )
    if draft.ended_at is None:
        mtime = spool.media_path.stat().st_mtime
        ended = datetime.fromtimestamp(mtime, UTC)
        draft = draft.model_copy(
            update={
                "ended_at": ended,
                "duration_seconds": max(0.0, (ended - draft.started_at).total_seconds()),
            }
        )
    return draft.model_copy(update={"recovered": True})


def _abort_stale(settings: StorageSettings, store: ObjectStore, known: set[str]) -> None:
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.stale_upload_age)
    for upload in store.list_uploads(key_prefix(settings)):
        if upload.upload_id in known or upload.initiated.astimezone(UTC) > cutoff:
            continue
        store.abort(upload.key, upload.upload_id)
        log.info("recover_aborted_stale_upload", object_key=upload.key)
