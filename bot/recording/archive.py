"""The track archive: every pulled track stored as it arrived (``recording.mode`` tracks
or both), each its own verified record.

A track's file is written where the frame has just been opened (decrypted, in an
encrypted call: the file holds what the participants saw and heard, never a key): on
aiortc's decoder thread of its receiver when the composite decodes the frames too, else
on the event loop as each frame completes (``BoundedDecoderQueue``); a frame costs a
few tens of microseconds to mux, and the file reaches the disk a cluster at a time.

Each track gets what the composite gets: a spool, a streaming multipart upload, a
fragment chain in its own audit trail, a sealed manifest (``track``) and ``bot recover``
after a crash, because each is a spool like any other. The recording's own manifest
lists them all (``archive``); with no composite (``tracks``) it is stored under the
tracks' prefix, signed, as the record of the recording.

What the record must not hold stays out here too: frames of a paused recording or of a
participant without consent are never written, and the file resumes at a keyframe.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from bot.config import FhirSettings, Settings
from bot.custody.audit import AuditLog
from bot.custody.chain import FragmentChain
from bot.custody.evidence import Evidence
from bot.custody.signing import Signer
from bot.manifest import ArchivedTrack, Gap, Manifest, ParticipantEntry, TrackEntry
from bot.media.track_file import CONTAINER, TrackFile
from bot.media.withholding import Withholding
from bot.rtc.aiortc_compat import request_keyframe
from bot.rtc.buffers import EncodedSink
from bot.rtc.tracks import PulledTrack
from bot.storage import (
    ObjectStore,
    Spool,
    StorageError,
    Uploader,
    UploadStatus,
    open_uploader,
)
from bot.storage.finalize import UploadResult, store_record
from bot.storage.keys import MANIFEST_SUFFIX
from bot.storage.uploader import State

log = structlog.get_logger("bot.recording.archive")

RECORD_NAME = "recording"
"""The tracks-only record's name under the tracks' prefix (its manifest, trail, signature)."""


def tracks_prefix(object_key: str) -> str:
    """Where a recording's tracks go: beside where its composite is (or would be)."""
    stem = object_key.rsplit(".", 1)[0] if "." in object_key.rsplit("/", 1)[-1] else object_key
    return f"{stem}.tracks/"


def archive_record_key(object_key: str) -> str:
    """The key a tracks-only recording's record is stored under (no object there: its
    manifest, audit trail and signature are at this key's suffixes)."""
    return tracks_prefix(object_key) + RECORD_NAME


def stored_tracks(store: ObjectStore, prefix: str) -> list[Manifest]:
    """The verified track records under a recording's tracks prefix, by track number.
    ``ValueError`` if a manifest there cannot be read."""
    found = []
    for key in store.list_keys(prefix):
        if key.endswith(MANIFEST_SUFFIX):
            manifest = Manifest.from_json(b"".join(store.iter_object(key)))
            if manifest.track is not None and manifest.storage is not None:
                found.append(manifest)
    return sorted(found, key=lambda m: m.track.number if m.track else 0)


def archive_record(tracks: list[Manifest], *, recovered: bool) -> Manifest:
    """A tracks-only recording's record made from its stored tracks alone (``bot
    recover``, when the recorder died before writing its own)."""
    first = tracks[0]
    assert first.track is not None
    entries = [stored_entry(m) for m in tracks]
    ended = [m.ended_at for m in tracks if m.ended_at is not None]
    people = {e.participant_id: e.role for e in entries}
    return Manifest(
        consultation_id=first.consultation_id,
        recording_id=first.track.part_of,
        participants=tuple(ParticipantEntry(id=p, role=r) for p, r in people.items()),
        tracks=tuple(t for m in tracks for t in m.tracks),
        started_at=first.track.timeline_origin,
        ended_at=max(ended) if ended else None,
        gaps=tuple(g for m in tracks for g in m.gaps),
        archive=tuple(entries),
        recovered=recovered,
    )


def stored_entry(manifest: Manifest) -> ArchivedTrack:
    """A verified track's entry for its recording's manifest: where it is, its hash."""
    assert manifest.track is not None and manifest.storage is not None
    storage = manifest.storage
    return manifest.track.model_copy(
        update={"object_key": storage.object_key, "sha256": storage.sha256, "size": storage.size}
    )


def store_archive_record(
    store: ObjectStore, manifest: Manifest, key: str, audit: AuditLog, signer: Signer | None
) -> UploadResult:
    """Seal a tracks-only recording's record with its audit trail and store it at
    ``key``. Blocking (it seals the trail): call from a thread."""
    # No media object: the fragment chain stays at its start, and the signed manifest
    # carries each track's SHA-256 instead (``Evidence.seal_archive``).
    evidence = Evidence(audit, FragmentChain(Path(os.devnull)), signer, FhirSettings())
    if manifest.ended_at is None:
        manifest = manifest.model_copy(update={"ended_at": datetime.now(UTC)})
    began = time.monotonic()
    return store_record(store, evidence.seal_archive(manifest, key), key, began=began)


def codec_name(mime: str | None) -> str | None:
    """``video/VP8`` -> ``vp8``; None when the archive cannot store it."""
    name = (mime or "").rsplit("/", 1)[-1].lower()
    return name if name in CONTAINER else None


@dataclass
class _ArchivedFile:
    """One track's file and everything that carries it to the store."""

    track: PulledTrack
    number: int
    file: TrackFile
    spool: Spool
    uploader: Uploader
    evidence: Evidence
    started_at: datetime
    lock: threading.Lock
    withheld: list[tuple[float, float, str]]
    losses: int = 0
    """The tap's video losses when the last frame was written."""
    open: bool = True
    """Frames are still written (False after the track ended, or a write failed)."""
    closed: bool = False
    failed: str | None = None


class TrackArchive:
    """All archived tracks of one recording (a ``TrackArchiver`` for the subscriber)."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore | None,
        *,
        consultation_id: str,
        recording_id: str,
        object_key: str,
        origin: datetime,
        withholding: Withholding,
        signer: Signer | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """``origin``: wall-clock time of the recording's timeline second 0."""
        self._settings = settings
        self._store = store
        self._consultation_id = consultation_id
        self._recording_id = recording_id
        self._prefix = tracks_prefix(object_key)
        self._origin = origin
        self._withholding = withholding
        self._signer = signer
        self._loop = loop
        self._files: list[_ArchivedFile] = []
        self.unstored = 0
        """Track files left in their spools because the store refused them."""
        self.unsupported: list[str] = []
        """Codecs of tracks that could not be archived (mime types)."""

    # -- the subscriber's side (event loop) -------------------------------------------

    def begin(self, track: PulledTrack) -> EncodedSink | None:
        codec = codec_name(track.codec)
        if codec is None:
            log.warning("archive.codec_unsupported", mid=track.mid, codec=track.codec)
            self.unsupported.append(track.codec or "unknown")
            return None
        number = len(self._files) + 1
        entry = self._open(track, number, codec)
        self._files.append(entry)
        log.info("archive.track_started", number=number, kind=track.kind, codec=codec)
        return lambda timestamp, data: self._write(entry, timestamp, data)

    def end(self, track: PulledTrack) -> None:
        for entry in self._files:
            if entry.track is track:
                self._close(entry)

    def upload_status(self) -> UploadStatus | None:
        """Every track's upload as one (sums, the worst lag, any alarm, the first disk
        cap reached), for the recorder's status and stop policy; None before a track."""
        statuses = [entry.uploader.status() for entry in self._files]
        if not statuses:
            return None
        states = {s.state for s in statuses}
        worst_first: tuple[State, ...] = ("failed", "finishing", "uploading", "idle", "done")
        state = next(s for s in worst_first if s in states)
        return UploadStatus(
            state=state,
            bytes_spooled=sum(s.bytes_spooled for s in statuses),
            bytes_uploaded=sum(s.bytes_uploaded for s in statuses),
            parts=sum(s.parts for s in statuses),
            lag_bytes=sum(s.lag_bytes for s in statuses),
            lag_seconds=max(s.lag_seconds for s in statuses),
            alarm=any(s.alarm for s in statuses),
            alarms=sum(s.alarms for s in statuses),
            errors=sum(s.errors for s in statuses),
            last_error=next((s.last_error for s in statuses if s.last_error), None),
            free_bytes=min(s.free_bytes for s in statuses),
            disk_limit=next((s.disk_limit for s in statuses if s.disk_limit), None),
        )

    # -- each frame (the event loop, or the decoder threads) ---------------------------

    def _write(self, entry: _ArchivedFile, timestamp: int, data: bytes) -> None:
        track = entry.track
        clock = track.clock
        t = clock.timeline_seconds(timestamp)
        if t is None:
            return
        track.frames += 1
        track.last_frame = time.time()
        reason = self._withholding.decided(t, track.participant.id)
        with entry.lock:
            if not entry.open:
                return
            if reason is not None:
                _note_withheld(entry.withheld, t, reason)
                entry.file.resume_at_keyframe()
                return
            losses = track.tap.video_losses
            if losses != entry.losses:
                # Packets were given up (a keyframe is asked for already): what follows
                # refers to them, so the file goes on from that keyframe, never corrupt.
                entry.losses = losses
                entry.file.resume_at_keyframe()
            try:
                entry.file.write(t, timestamp / clock.clock_rate, data)
            except Exception as exc:  # a bad frame must not end the caller (loop or thread)
                entry.failed = f"{type(exc).__name__}: {exc}"
                entry.open = False
                log.error("archive.write_failed", number=entry.number, error=entry.failed)

    # -- opening and closing ----------------------------------------------------------

    def _open(self, track: PulledTrack, number: int, codec: str) -> _ArchivedFile:
        settings = self._settings
        container = CONTAINER[codec]
        track_id = f"{self._recording_id}-t{number:02d}"
        spool = Spool.create(
            settings.storage.spool_dir,
            consultation_id=self._consultation_id,
            recording_id=track_id,
            object_key=f"{self._prefix}t{number:02d}-{track.kind}.{container}",
            media_name=f"track.{container}",
        )
        audit = AuditLog.beside_spool(settings.storage.spool_dir, self._consultation_id, track_id)
        audit.record("track.started", part_of=self._recording_id, number=number, codec=codec)
        no_fhir = settings.fhir.model_copy(update={"enabled": False})
        evidence = Evidence(audit, FragmentChain(spool.media_path), self._signer, no_fhir)
        uploader = open_uploader(settings.storage, spool, self._store)
        entry = _ArchivedFile(
            track,
            number,
            TrackFile(
                spool.media_path,
                codec,
                on_piece=_piece_written(evidence, uploader),
                want_keyframe=self._keyframe_asker(track),
            ),
            spool,
            uploader,
            evidence,
            datetime.now(UTC),
            threading.Lock(),
            [],
        )
        spool.save_manifest_draft(self.track_manifest(entry))
        uploader.start()
        return entry

    def _keyframe_asker(self, track: PulledTrack) -> Callable[[], None]:
        def ask() -> None:
            ssrc = track.clock.ssrc
            if ssrc is not None and track.active:
                self._loop.call_soon_threadsafe(request_keyframe, track.receiver, ssrc)

        return ask

    def _close(self, entry: _ArchivedFile) -> None:
        with entry.lock:
            if entry.closed:
                return
            entry.open, entry.closed = False, True
            try:
                entry.file.close()
            except Exception as exc:
                entry.failed = f"{type(exc).__name__}: {exc}"
                log.error("archive.close_failed", number=entry.number, error=entry.failed)

    # -- the end ----------------------------------------------------------------------

    async def finish(self) -> list[ArchivedTrack]:
        """Close every file, store and verify each with its sealed manifest; the verified
        tracks for the recording's manifest. A track the store refuses stays in its
        spool for ``bot recover`` (logged); it is left out of the list."""
        await asyncio.to_thread(self._close_all)
        # One after the other: each holds its last part (up to ``part_size``) in memory
        # while it uploads, and together they would double the recorder's peak.
        stored = [await self._store_one(entry) for entry in self._files]
        return [track for track in stored if track is not None]

    def _close_all(self) -> None:
        for entry in self._files:
            self._close(entry)

    async def _store_one(self, entry: _ArchivedFile) -> ArchivedTrack | None:
        audit = entry.evidence.audit
        if entry.file.report.frames == 0:
            entry.uploader.abandon()
            await audit.close()
            await asyncio.to_thread(entry.spool.delete)
            audit.path.unlink(missing_ok=True)
            return None
        try:
            result = await asyncio.to_thread(
                entry.uploader.finish, self.track_manifest(entry), entry.evidence.seal
            )
        except StorageError as exc:
            self.unstored += 1
            log.error("archive.store_failed", number=entry.number, kind=exc.kind, error=str(exc))
            return None
        finally:
            await audit.close()
        audit.path.unlink()  # stored beside the track, sealed into its manifest
        return stored_entry(result.manifest)

    def track_manifest(self, entry: _ArchivedFile) -> Manifest:
        """The track's own manifest (a draft until its object is verified)."""
        track, report = entry.track, entry.file.report
        participant = track.participant
        ended = datetime.now(UTC) if entry.closed else None
        return Manifest(
            consultation_id=self._consultation_id,
            recording_id=entry.spool.info.recording_id,
            participants=(ParticipantEntry(id=participant.id, role=participant.role),),
            tracks=(
                TrackEntry(
                    participant_id=participant.id, kind=track.kind, track_name=track.ref.track_name
                ),
            ),
            started_at=entry.started_at,
            ended_at=ended,
            duration_seconds=(
                report.last_s - report.first_s
                if report.first_s is not None and report.last_s is not None
                else None
            ),
            gaps=tuple(
                [
                    Gap(participant_id=participant.id, kind=track.kind, start=a, end=b)
                    for a, b in report.gaps
                ]
                + [
                    Gap(participant_id=participant.id, kind=track.kind, start=a, end=b, reason=r)
                    for a, b, r in entry.withheld
                ]
            ),
            track=ArchivedTrack(
                part_of=self._recording_id,
                number=entry.number,
                participant_id=participant.id,
                role=participant.role,
                slot=track.slot,
                kind="audio" if track.kind == "audio" else "video",
                codec=track.codec or "",
                timeline_origin=self._origin,
                container="mp4" if report.container == "mp4" else "webm",
                clock="sender_reports" if track.clock.synced else "arrival",
                first_s=None if report.first_s is None else round(report.first_s, 6),
                last_s=None if report.last_s is None else round(report.last_s, 6),
                frames=report.frames,
                keyframes=report.keyframes,
                frames_before_keyframe=report.frames_before_keyframe,
                sizes=tuple(report.sizes),
                anchors=tuple(report.anchors),
                object_key=entry.spool.info.object_key,
            ),
        )


def _piece_written(evidence: Evidence, uploader: Uploader) -> Callable[[], None]:
    def written() -> None:
        evidence.fragment_written()
        uploader.poke()

    return written


def _note_withheld(stretches: list[tuple[float, float, str]], t: float, reason: str) -> None:
    """Extend the current withheld stretch, or start one (a new reason, or after a frame
    that went in)."""
    t = round(t, 3)
    if stretches and stretches[-1][2] == reason and t - stretches[-1][1] < 1.0:
        start, _, _ = stretches[-1]
        stretches[-1] = (start, t, reason)
    elif len(stretches) < 256:
        stretches.append((t, t, reason))
