"""``bot recover``: finish every recording a crash left behind, with its evidence.

Each orphaned spool is resumed with ListParts as the authority, completed and verified
like a normal recording, and sealed like one: its audit trail is reopened and continued
(the recovery is in it, under the actor ``recover``), the spooled file is proven to start
with every fragment the trail records, and the trail, the signature and the manifest
(marked ``recovered``) are stored beside the object. Then the stale uploads go.
"""

from __future__ import annotations

import asyncio

import structlog

from bot.config import ConfigError, Settings
from bot.custody.audit import RECOVER_ACTOR, AuditLog
from bot.custody.evidence import Evidence
from bot.custody.signing import Signer, load_signer
from bot.exitcodes import ExitCode
from bot.recording.archive import (
    RECORD_NAME,
    archive_record,
    store_archive_record,
    stored_tracks,
)
from bot.storage import ObjectStore, Spool, StorageError, Uploader, UploadResult
from bot.storage.recover import abort_stale, claim_orphans, recovered_manifest
from bot.storage.spool import trail_path
from bot.storage.stores import open_store

log = structlog.get_logger("bot.recording.recovery")


async def recover_all(settings: Settings) -> ExitCode:
    """Recover every orphaned spool; OK only if all of them end verified."""
    try:
        signer = load_signer(settings.custody)
        store = open_store(settings.storage)
    except ConfigError as exc:
        log.error("recover_config_error", error=str(exc))
        return ExitCode.CONFIG
    orphans = await asyncio.to_thread(claim_orphans, settings.storage.spool_dir)
    failures = 0
    recordings: dict[str, str] = {}
    """Tracks-only recordings whose tracks were recovered: id -> a track's object key."""
    for spool in orphans.spools:
        result = await recover_spool(settings, store, spool, signer)
        if result is None:
            failures += 1
        elif result.manifest.track is not None:
            recordings[result.manifest.track.part_of] = result.object_key
    for recording_id, track_key in recordings.items():
        if not await recover_archive_record(settings, store, recording_id, track_key, signer):
            failures += 1
    try:
        await asyncio.to_thread(abort_stale, settings.storage, store, orphans.known_uploads)
    except StorageError as exc:
        failures += 1
        log.error("recover_abort_stale_failed", kind=exc.kind, error=str(exc))
    return ExitCode.OK if failures == 0 else ExitCode.STORAGE


async def recover_spool(
    settings: Settings, store: ObjectStore, spool: Spool, signer: Signer | None
) -> UploadResult | None:
    """Store one locked orphan and its evidence; None (spool and trail kept) if the
    store refuses."""
    info = spool.info
    audit = AuditLog(spool.trail_path, info.consultation_id, info.recording_id)
    try:
        evidence = await asyncio.to_thread(
            Evidence.resume, audit, spool.media_path, signer, settings.fhir
        )
        uploader = Uploader(settings.storage, spool, store)
        result = await asyncio.to_thread(uploader.finish, recovered_manifest(spool), evidence.seal)
    except StorageError as exc:
        spool.unlock()
        log.error("recover_failed", recording_id=info.recording_id, kind=exc.kind, error=str(exc))
        return None
    finally:
        await audit.close()
    spool.trail_path.unlink()  # stored beside the object, sealed into its manifest
    log.info(
        "recovered", recording_id=info.recording_id, object_key=result.object_key, size=result.size
    )
    return result


async def recover_archive_record(
    settings: Settings, store: ObjectStore, recording_id: str, track_key: str, signer: Signer | None
) -> bool:
    """A tracks-only recording whose recorder died: once its tracks are stored, its own
    record (what the recorder would have stored last), made from every stored track and
    sealed with the recording's audit trail. A recording with a composite keeps its
    trail for that composite's spool instead."""
    trail = trail_path(settings.storage.spool_dir, recording_id)
    if not trail.is_file() or (settings.storage.spool_dir / recording_id).exists():
        return True
    prefix = track_key.rsplit("/", 1)[0] + "/"
    try:
        tracks = await asyncio.to_thread(stored_tracks, store, prefix)
    except (StorageError, ValueError) as exc:
        log.error("recover_record_failed", recording_id=recording_id, error=str(exc))
        return False
    manifest = archive_record(tracks, recovered=True)
    audit = AuditLog(trail, manifest.consultation_id, recording_id)
    audit.record("recording.recovering", actor=RECOVER_ACTOR, tracks=len(tracks))
    try:
        await asyncio.to_thread(
            store_archive_record, store, manifest, prefix + RECORD_NAME, audit, signer
        )
    except StorageError as exc:
        log.error("recover_record_failed", recording_id=recording_id, error=str(exc))
        return False
    finally:
        await audit.close()
    trail.unlink()
    log.info("recovered_record", recording_id=recording_id, tracks=len(tracks))
    return True
