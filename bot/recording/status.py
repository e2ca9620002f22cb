"""What a running recording looks like from outside, as one immutable snapshot.

Metrics, the control API and the terminal panel read only this: none of them reaches
into the transport, the media thread or the uploader, and a snapshot read on the event
loop cannot change under its reader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from bot.e2ee.session import E2eeStatus
from bot.recording.supervisor import TransportSupervisor
from bot.rtc.subscriber import Subscriber
from bot.rtc.track_status import TrackStatus
from bot.storage import UploadStatus

if TYPE_CHECKING:
    from bot.media.pipeline import MediaPipeline


@dataclass(frozen=True)
class ParticipantStatus:
    id: str
    role: str
    slot: int
    consent: bool
    """Whether their media enters the record now (consent given, or not required)."""


@dataclass(frozen=True)
class MediaStatus:
    """The media thread's counters (read from the loop: int reads are atomic)."""

    alive: bool
    video_frames_written: int
    video_frames_dropped: int
    audio_frames_dropped: int

    @classmethod
    def of(cls, pipeline: MediaPipeline) -> Self:
        return cls(
            alive=pipeline.alive,
            video_frames_written=pipeline.video_frames_written,
            video_frames_dropped=pipeline.report.video_frames_dropped_in_queue,
            audio_frames_dropped=pipeline.report.audio_frames_dropped_in_queue,
        )


@dataclass(frozen=True)
class TransportStatus:
    connected: bool
    failed: bool
    rebuilds: int
    packets_lost: dict[str, int]
    """Cumulative RTP packets lost per track mid, as last gathered (``Recorder.refresh``)."""

    @classmethod
    def of(cls, transport: Subscriber, rebuilds: int, packets_lost: Mapping[str, int]) -> Self:
        return cls(
            connected=transport.connected.is_set(),
            failed=transport.failed.is_set(),
            rebuilds=rebuilds,
            packets_lost=dict(packets_lost),
        )


@dataclass(frozen=True)
class RecorderStatus:
    consultation_id: str
    recording_id: str
    started: bool
    stopping: bool
    duration_s: float
    paused: bool
    participants: tuple[ParticipantStatus, ...]
    tracks: tuple[TrackStatus, ...]
    transport: TransportStatus | None
    media: MediaStatus | None
    upload: UploadStatus | None
    e2ee: E2eeStatus | None = None

    @classmethod
    def of(
        cls,
        consultation_id: str,
        recording_id: str,
        *,
        started: bool,
        stopping: bool,
        supervisor: TransportSupervisor[Subscriber] | None,
        elapsed: float,
        pipeline: MediaPipeline | None,
        participants: tuple[ParticipantStatus, ...],
        paused: bool,
        packets_lost: Mapping[str, int],
        upload: UploadStatus | None,
        e2ee: E2eeStatus | None = None,
    ) -> Self:
        """The snapshot of a recorder's parts, each read once (what is not running yet
        reads as empty)."""
        transport = supervisor.current if supervisor else None
        return cls(
            consultation_id=consultation_id,
            recording_id=recording_id,
            started=started,
            stopping=stopping,
            duration_s=round(elapsed, 3),
            paused=paused,
            participants=participants,
            tracks=tuple(transport.track_status()) if transport else (),
            transport=TransportStatus.of(transport, supervisor.rebuilds, packets_lost)
            if supervisor and transport
            else None,
            media=MediaStatus.of(pipeline) if pipeline else None,
            upload=upload,
            e2ee=e2ee,
        )

    def readiness(self) -> tuple[bool, str]:
        """Recording and connected (what ``/readyz`` reports), with the reason if not."""
        if not self.started:
            return False, "starting"
        if self.stopping:
            return False, "stopping"
        if self.media is not None and not self.media.alive:
            return False, "media pipeline stopped"
        if self.transport is None or self.transport.failed:
            return False, "transport failed"
        if self.tracks and not self.transport.connected:
            return False, "connecting"
        return True, "recording"

    def as_dict(self) -> dict[str, Any]:
        """The control API's ``GET /status`` body (its documented keys)."""
        upload = self.upload
        return {
            "consultation_id": self.consultation_id,
            "recording_id": self.recording_id,
            "duration_s": self.duration_s,
            "paused": self.paused,
            "participants": [
                {"id": p.id, "role": p.role, "slot": p.slot, "consent": p.consent}
                for p in self.participants
            ],
            "tracks": [track.as_dict() for track in self.tracks],
            "bytes_recorded": upload.bytes_spooled if upload else 0,
            "bytes_uploaded": upload.bytes_uploaded if upload else 0,
            "upload_alarm": upload.alarm if upload else False,
            "disk_limit": upload.disk_limit if upload else None,
            "last_error": upload.last_error if upload else None,
            "e2ee": dataclasses.asdict(self.e2ee) if self.e2ee else None,
        }
