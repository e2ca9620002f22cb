"""``bot compose``: the composite a live recorder would have made, made later from the
recording's archived tracks, as a batch job.

The same media pipeline as the live recorder (layout, mix, speaker tracks, captions,
gaps), driven by the files instead of the network: frames are decoded in timeline order
and the pipeline writes everything up to each step as soon as every frame before it is
in (``MediaPipeline.write_until``), so it runs as fast as decoding and x264 allow. The
MP4 goes where the live one would (``<stem>.mp4`` beside ``<stem>.tracks/``), through a
spool, the streaming upload, verification and a sealed manifest (``composed``, with the
tracks it was made from in ``archive``), exactly like a live recording; a composite
already stored there is never overwritten.
"""

from __future__ import annotations

import asyncio
import heapq
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from bot.compose.placement import placed_frames
from bot.compose.sources import ComposeError, TrackSource, tracks_in_folder, tracks_in_store
from bot.config import Settings
from bot.custody.audit import AuditLog
from bot.custody.signing import load_signer
from bot.manifest import (
    AudioInfo,
    Manifest,
    ParticipantEntry,
    VideoInfo,
)
from bot.media.pipeline import SETTLE_FRACTION, MediaPipeline
from bot.media.report import SAMPLE_RATE, MediaReport, SlotInfo
from bot.media.withholding import Withholding
from bot.recording.archive import stored_entry, tracks_prefix
from bot.recording.manifest_builder import gap_entries, layout_record
from bot.recording.output import open_output, open_pipeline
from bot.storage import ObjectStore, UploadResult
from bot.storage.stores import open_store
from bot.timeline import Timeline

log = structlog.get_logger("bot.compose")

STEP_SECONDS = 0.2
"""Frames are decoded this far ahead of what the pipeline writes: well inside its input
queues (a second of video), so none is dropped."""
UNPLACED = "participant"
"""The role of a cell no archived track names (a slot of someone never recorded)."""


@dataclass(frozen=True)
class Composed:
    upload: UploadResult
    media: MediaReport
    seconds: float
    """Wall time from the first decoded frame to the verified object."""


async def compose(
    settings: Settings, *, key: str | None = None, folder: Path | None = None
) -> Composed:
    """Compose the recording whose composite key is ``key`` (tracks in the store), or
    whose tracks are in ``folder``; upload and verify it like a live recording."""
    store = open_store(settings.storage)
    settings.storage.spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.storage.spool_dir, prefix="compose-") as work:
        if folder is not None:
            sources = await asyncio.to_thread(tracks_in_folder, folder)
        elif key is not None:
            prefix = tracks_prefix(key)
            sources = await asyncio.to_thread(tracks_in_store, store, prefix, Path(work))
        else:
            raise ComposeError("give the recording's object key, or a folder of its tracks")
        object_key = key or _composite_key(sources)
        if store.head(object_key) is not None:
            raise ComposeError(
                f"{store.describe(object_key)} exists: a stored record is never overwritten"
            )
        return await _compose(settings, store, sources, object_key)


def _composite_key(sources: list[TrackSource]) -> str:
    """``<stem>.mp4`` for tracks stored under ``<stem>.tracks/``."""
    object_key = sources[0].track.object_key
    assert object_key is not None
    folder = object_key.rsplit("/", 1)[0]
    return folder.removesuffix(".tracks") + ".mp4"


async def _compose(
    settings: Settings, store: ObjectStore, sources: list[TrackSource], object_key: str
) -> Composed:
    first = sources[0]
    consultation_id, recording_id = first.manifest.consultation_id, first.track.part_of
    origin = first.track.timeline_origin
    slots = _slots(settings, sources)
    end = max(_track_end(s, settings.recording.fps) for s in sources)
    audit = AuditLog.beside_spool(settings.storage.spool_dir, consultation_id, recording_id)
    audit.record("compose.started", tracks=[s.track.object_key for s in sources])
    draft = _manifest(settings, sources, slots, origin, None)
    output = await asyncio.to_thread(
        open_output,
        settings,
        store,
        consultation_id=consultation_id,
        recording_id=recording_id,
        object_key=object_key,
        draft=draft,
        speaker_titles=[slot.role for slot in slots],
        audit=audit,
        signer=load_signer(settings.custody),
    )
    try:
        began = time.monotonic()
        output.uploader.start()
        timeline = Timeline(origin.timestamp())
        pipeline = open_pipeline(settings.recording, output.writer, slots, timeline, Withholding())
        settle = settings.recording.latency * SETTLE_FRACTION
        media = await asyncio.to_thread(_run_pipeline, pipeline, sources, end, settle)
        manifest = _manifest(settings, sources, slots, origin, media)
        upload = await asyncio.to_thread(output.uploader.finish, manifest, output.evidence.seal)
    finally:
        await audit.close()
    audit.path.unlink()  # stored beside the composite, sealed into its manifest
    seconds = time.monotonic() - began
    log.info(
        "compose.finished",
        object_key=upload.object_key,
        media_seconds=round(media.duration, 3),
        seconds=round(seconds, 3),
        speed=round(media.duration / seconds, 2) if seconds else None,
    )
    return Composed(upload, media, seconds)


def _run_pipeline(
    pipeline: MediaPipeline, sources: list[TrackSource], end: float, settle: float
) -> MediaReport:
    """Decode every track in timeline order into the pipeline, on this thread."""
    step = STEP_SECONDS
    placed = (placed_frames(s, order, settle) for order, s in enumerate(sources))
    frames = heapq.merge(*placed)
    for t, _, slot, frame in frames:
        if t < 0 or t >= end:
            continue
        while t >= step:
            # Every frame placed before ``step`` is in: what it shows is final.
            pipeline.write_until(step - 1e-3)
            step += STEP_SECONDS
        pipeline.submit(slot, t, frame)
    return pipeline.close_at(end)


def _slots(settings: Settings, sources: list[TrackSource]) -> list[SlotInfo]:
    """The cells as the recorder had them: each archived track says its slot and role."""
    by_slot: dict[int, SlotInfo] = {}
    for source in sources:
        track = source.track
        by_slot.setdefault(track.slot, SlotInfo(track.participant_id, track.role))
    roles = settings.recording.layout
    count = max(len(roles), max(by_slot) + 1)
    return [
        by_slot.get(i, SlotInfo("", roles[i] if i < len(roles) else UNPLACED)) for i in range(count)
    ]


def _track_end(source: TrackSource, fps: int) -> float:
    """Timeline second just after a track's last frame."""
    track = source.track
    last = track.last_s or 0.0
    return last + (0.02 if track.kind == "audio" else 1.0 / fps)


def _manifest(
    settings: Settings,
    sources: list[TrackSource],
    slots: list[SlotInfo],
    origin: datetime,
    media: MediaReport | None,
) -> Manifest:
    rec = settings.recording
    first = sources[0]
    people = {s.track.participant_id: s.track.role for s in sources}
    return Manifest(
        consultation_id=first.manifest.consultation_id,
        recording_id=first.track.part_of,
        participants=tuple(ParticipantEntry(id=p, role=r) for p, r in people.items()),
        tracks=tuple(t for s in sources for t in s.manifest.tracks),
        started_at=origin,
        ended_at=origin + timedelta(seconds=media.duration) if media else None,
        duration_seconds=media.duration if media else None,
        video=VideoInfo(codec="h264", width=rec.width, height=rec.height, fps=rec.fps),
        audio=AudioInfo(codec=rec.audio_codec, sample_rate=SAMPLE_RATE, channels=1),
        # The tracks' own gaps say why (withheld, no media); the pipeline's where.
        gaps=gap_entries(media.gaps) + tuple(g for s in sources for g in s.manifest.gaps)
        if media
        else (),
        layout=layout_record(media.layout) if media and media.layout else None,
        archive=tuple(stored_entry(s.manifest) for s in sources),
        composed=True,
        sync={"slots": media.slots, "composed_at": datetime.now(UTC).isoformat()} if media else {},
    )
