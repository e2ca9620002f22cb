"""The manifest of a recording, from the roster, the transport and the media report.

Built twice: as a draft before the first frame (so that ``bot recover`` can finish a
recording whose process died) and at the end with what the media thread did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.config import RecordingSettings
from bot.e2ee.frames import Outcome
from bot.e2ee.session import E2eeSession
from bot.manifest import (
    AudioInfo,
    CellEntry,
    ConsentChange,
    E2eeChange,
    E2eeRecord,
    Gap,
    LayoutRecord,
    Manifest,
    ParticipantEntry,
    SpeakerSwitch,
    TrackEntry,
    VideoInfo,
)
from bot.media.gaps import Gap as MediaGap
from bot.media.report import SAMPLE_RATE, MediaReport
from bot.recording.roster import Roster
from bot.recording.supervisor import TransportSupervisor
from bot.rtc.subscriber import FailedTrack, PulledTrack, Subscriber
from bot.rtc.track_status import TrackStatus

if TYPE_CHECKING:
    from bot.media.layout import LayoutReport

CLOCK_NOTE = "wall clock from RTCP sender reports, else packet arrival"


@dataclass(frozen=True)
class TransportFacts:
    """What the WebRTC side contributes: every track ever pulled, per-track timing, the
    tracks never (or no longer) recorded, and how often the transport was rebuilt."""

    tracks: Sequence[PulledTrack]
    track_status: Sequence[TrackStatus]
    failed_tracks: Sequence[FailedTrack]
    rebuilds: int

    @classmethod
    def of(cls, supervisor: TransportSupervisor[Subscriber] | None) -> TransportFacts:
        """What the supervisor's transports knew; nothing before the recorder runs."""
        if supervisor is None:
            return cls(tracks=[], track_status=[], failed_tracks=[], rebuilds=0)
        transport = supervisor.current
        return cls(
            tracks=supervisor.retired + transport.tracks,
            track_status=transport.track_status(),
            failed_tracks=list(transport.failed_tracks.values()),
            rebuilds=supervisor.rebuilds,
        )


def build_manifest(
    rec: RecordingSettings,
    *,
    consultation_id: str,
    recording_id: str,
    roster: Roster,
    transport: TransportFacts,
    started_at: datetime,
    ended_at: datetime | None,
    media: MediaReport | None,
    consent: list[tuple[str, bool, float]] | None = None,
    e2ee: E2eeRecord | None = None,
) -> Manifest:
    """``consent``: the changes as ``Withholding.consent_changes`` lists them."""
    return Manifest(
        consultation_id=consultation_id,
        recording_id=recording_id,
        participants=tuple(ParticipantEntry(id=p.id, role=p.role) for p in roster.ever()),
        tracks=tuple(
            TrackEntry(participant_id=t.participant.id, kind=t.kind, track_name=t.ref.track_name)
            for t in transport.tracks
        ),
        started_at=started_at,
        ended_at=ended_at,
        duration_seconds=media.duration if media else None,
        # The composite's format; with tracks only, each track's is in ``archive``.
        video=None
        if rec.mode == "tracks"
        else VideoInfo(codec="h264", width=rec.width, height=rec.height, fps=rec.fps),
        audio=None
        if rec.mode == "tracks"
        else AudioInfo(codec=rec.audio_codec, sample_rate=SAMPLE_RATE, channels=1),
        gaps=gap_entries(media.gaps if media else []),
        require_consent=rec.require_consent,
        e2ee=e2ee,
        consent=tuple(
            ConsentChange(
                participant_id=participant,
                consent="given" if given else "withdrawn",
                at=round(at, 3),
            )
            for participant, given, at in consent or ()
        ),
        layout=layout_record(media.layout) if media and media.layout else None,
        sync=sync_report(rec.fps, transport, media),
    )


def gap_entries(gaps: Sequence[MediaGap]) -> tuple[Gap, ...]:
    """The manifest's ``gaps`` from the media thread's."""
    return tuple(
        Gap(
            participant_id=g.participant or None,
            kind=g.kind,
            start=round(g.start, 3),
            end=round(g.end, 3),
            reason=g.reason,
        )
        for g in gaps
    )


def layout_record(layout: LayoutReport) -> LayoutRecord:
    """The manifest's ``layout``: how the picture was laid out, and every speaker switch."""
    spec = layout.spec
    return LayoutRecord(
        mode=spec.mode,
        fit=spec.fit,
        aspect=f"{spec.aspect[0]}:{spec.aspect[1]}",
        cells=tuple(CellEntry(x=r.x, y=r.y, width=r.width, height=r.height) for r in layout.cells),
        switches=tuple(
            SpeakerSwitch(at=at, participant_id=participant) for at, participant in layout.switches
        ),
    )


def e2ee_record(session: E2eeSession) -> E2eeRecord | None:
    """The manifest's ``e2ee``: only for a call that was encrypted (or joined)."""
    outcomes = {str(k): v for k, v in session.frames.outcomes.items() if k != Outcome.PLAIN}
    if not outcomes and not session.events:
        return None
    changes = tuple(
        E2eeChange(
            kind=event.kind,
            epoch=event.epoch,
            safety_number=event.safety_number,
            members=event.members,
            at=datetime.fromtimestamp(event.at, UTC),
        )
        for event in session.events
    )
    return E2eeRecord(changes=changes, frames=outcomes)


def sync_report(fps: int, transport: TransportFacts, media: MediaReport | None) -> dict[str, Any]:
    """How each track was timed and what the media thread did (the manifest's ``sync``)."""
    report: dict[str, Any] = {
        "clock": CLOCK_NOTE,
        "rebuilds": transport.rebuilds,
        "tracks": [track.as_dict() for track in transport.track_status],
        "failed_tracks": [f.report() for f in transport.failed_tracks],
    }
    if media is None:
        return report
    video_s = media.video_frames / fps
    audio_s = media.audio_samples / SAMPLE_RATE
    report.update(
        duration_error_s=round(
            max(abs(video_s - media.duration), abs(audio_s - media.duration)), 4
        ),
        output_video_s=round(video_s, 4),
        output_audio_s=round(audio_s, 4),
        video_frames=media.video_frames,
        video_frames_dropped_in_queue=media.video_frames_dropped_in_queue,
        video_frames_repeated=media.video_frames_repeated,
        audio_frames_dropped_in_queue=media.audio_frames_dropped_in_queue,
        slots=media.slots,
    )
    return report
