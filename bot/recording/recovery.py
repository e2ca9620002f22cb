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
from bot.custody.audit import AuditLog
from bot.custody.evidence import Evidence
from bot.custody.signing import Signer, load_signer
from bot.exitcodes import ExitCode
from bot.storage import ObjectStore, Spool, StorageError, Uploader
from bot.storage.recover import abort_stale, claim_orphans, recovered_manifest
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
    for spool in orphans.spools:
        if not await recover_spool(settings, store, spool, signer):
            failures += 1
    try:
        await asyncio.to_thread(abort_stale, settings.storage, store, orphans.known_uploads)
    except StorageError as exc:
        failures += 1
        log.error("recover_abort_stale_failed", kind=exc.kind, error=str(exc))
    return ExitCode.OK if failures == 0 else ExitCode.STORAGE


async def recover_spool(
    settings: Settings, store: ObjectStore, spool: Spool, signer: Signer | None
) -> bool:
    """Store one locked orphan and its evidence; False (spool and trail kept) if the
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
        return False
    finally:
        await audit.close()
    spool.trail_path.unlink()  # stored beside the object, sealed into its manifest
    log.info(
        "recovered", recording_id=info.recording_id, object_key=result.object_key, size=result.size
    )
    return True
