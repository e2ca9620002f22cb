"""Where a recording's bytes go before the first frame: spool, uploader, MP4 writer.

Made in one place, from a thread (it is disk work), so that the recorder's loop never
blocks on a file and the three are wired the same way every time: the writer writes into
the spool and pokes the uploader after each fragment, the uploader streams the spool to
the store. The recording's evidence (``bot.custody``) links each fragment into the audit
trail before the uploader is told of it, and seals the manifest at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.config import RecordingSettings, Settings
from bot.custody.audit import AuditLog
from bot.custody.chain import FragmentChain
from bot.custody.evidence import Evidence
from bot.custody.signing import Signer
from bot.manifest import Manifest
from bot.media.layout import LayoutSpec
from bot.media.overlay import Captions
from bot.media.pipeline import MediaPipeline
from bot.media.report import SlotInfo
from bot.media.withholding import Withholding
from bot.media.writer import Mp4Writer
from bot.storage import ObjectStore, Spool, Uploader, open_uploader
from bot.timeline import Timeline


@dataclass(frozen=True)
class Output:
    spool: Spool
    uploader: Uploader
    writer: Mp4Writer
    evidence: Evidence


def open_output(
    settings: Settings,
    store: ObjectStore | None,
    *,
    consultation_id: str,
    recording_id: str,
    object_key: str,
    draft: Manifest,
    speaker_titles: list[str],
    audit: AuditLog,
    signer: Signer | None,
) -> Output:
    """The spool with its draft manifest (what ``bot recover`` needs after a crash), the
    uploader (not started), the evidence, and the writer with the MP4 header written."""
    rec = settings.recording
    spool = Spool.create(
        settings.storage.spool_dir,
        consultation_id=consultation_id,
        recording_id=recording_id,
        object_key=object_key,
    )
    spool.save_manifest_draft(draft)
    uploader = open_uploader(settings.storage, spool, store)
    evidence = Evidence(audit, FragmentChain(spool.media_path), signer, settings.fhir)

    def fragment_written() -> None:
        evidence.fragment_written()
        uploader.poke()

    writer = composite_writer(rec, spool.media_path, speaker_titles, fragment_written)
    return Output(spool, uploader, writer, evidence)


def composite_writer(
    rec: RecordingSettings,
    path: Path,
    speaker_titles: list[str],
    on_fragment: Callable[[], None] | None = None,
) -> Mp4Writer:
    """The composite's MP4 writer at ``path``, as the recording settings say."""
    return Mp4Writer(
        path,
        width=rec.width,
        height=rec.height,
        fps=rec.fps,
        video_bitrate=rec.video_bitrate,
        keyframe_seconds=rec.keyframe_seconds,
        audio_codec=rec.audio_codec,
        audio_bitrate=rec.audio_bitrate,
        speaker_titles=speaker_titles,
        preset=rec.video_preset,
        encoder_threads=rec.encoder_threads,
        on_fragment=on_fragment,
    )


def open_pipeline(
    rec: RecordingSettings,
    writer: Mp4Writer,
    slots: list[SlotInfo],
    timeline: Timeline,
    withholding: Withholding,
) -> MediaPipeline:
    """The media thread writing into ``writer`` (not started)."""
    return MediaPipeline(
        writer,
        slots,
        width=rec.width,
        height=rec.height,
        fps=rec.fps,
        timeline=timeline,
        latency=rec.latency,
        withholding=withholding,
        captions=Captions.of(rec),
        layout=LayoutSpec.of(rec),
    )
