"""What ``bot recover`` needs from storage: the orphaned spools, their manifests, and the
stale uploads to abort.

A spool is orphaned when no live process holds its lock. Its manifest is the recorder's
last draft, marked ``recovered``; the recovery itself (resume, complete, verify, seal) is
the uploader's, driven by ``bot.recording.recovery``. Multipart uploads under this
recorder's key prefix that no journal knows and that are older than
``stale_upload_age`` are aborted, so they stop costing storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from bot.config import StorageSettings
from bot.manifest import Manifest
from bot.storage.keys import key_prefix
from bot.storage.spool import Spool
from bot.storage.stores import ObjectStore

log = structlog.get_logger("bot.storage.recover")


@dataclass(frozen=True)
class Orphans:
    """The spools this process has locked to recover, and every upload any spool (live
    or not) still owns, which must not be aborted as stale."""

    spools: list[Spool]
    known_uploads: set[str]


def claim_orphans(spool_dir: Path) -> Orphans:
    """Lock every orphaned spool with something in it, oldest first."""
    claimed: list[Spool] = []
    known: set[str] = set()
    for spool in Spool.scan(spool_dir):
        journal = spool.journal()
        if journal is not None and journal.upload_id is not None:
            known.add(journal.upload_id)
        if not spool.try_lock():
            log.info("recover_skip_live", recording_id=spool.info.recording_id)
            continue
        if spool.media_size() == 0:
            log.warning("recover_skip_empty", recording_id=spool.info.recording_id)
            spool.unlock()
            continue
        claimed.append(spool)
    return Orphans(claimed, known)


def recovered_manifest(spool: Spool) -> Manifest:
    """The recorder's last draft (or what the spool knows), ended when the file last grew."""
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


def abort_stale(settings: StorageSettings, store: ObjectStore, known: set[str]) -> None:
    """Abort the uploads under this recorder's prefix that no spool owns and that are old."""
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.stale_upload_age)
    for upload in store.list_uploads(key_prefix(settings)):
        if upload.upload_id in known or upload.initiated.astimezone(UTC) > cutoff:
            continue
        store.abort(upload.key, upload.upload_id)
        log.info("recover_aborted_stale_upload", object_key=upload.key)
