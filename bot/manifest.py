"""The manifest: what a stored recording is, written as JSON next to the object.

It is the record an auditor reads without opening the MP4: who took part (opaque ids and
roles, never names), when, which codecs, where the timeline has gaps, and how the object
was verified in storage. The media side fills the recording fields; ``bot.storage`` adds
the ``storage`` block once the object is verified, so a manifest with a ``storage`` block
always describes a verified object.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from bot import __version__

SCHEMA_VERSION = 4
"""2: ``custody`` (chain heads and signature), ``storage.sha1``, consent, ``e2ee``;
3: ``layout``; 4: ``track`` and ``archive`` (tracks stored as they arrived)."""
_OPAQUE = r"^[A-Za-z0-9_-]{1,64}$"
_SHA256 = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParticipantEntry(_Model):
    id: str = Field(pattern=_OPAQUE)
    role: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")


class TrackEntry(_Model):
    participant_id: str = Field(pattern=_OPAQUE)
    kind: Literal["audio", "video"]
    track_name: str


class VideoInfo(_Model):
    codec: str
    width: int
    height: int
    fps: float


class AudioInfo(_Model):
    codec: str
    sample_rate: int
    channels: int


class Gap(_Model):
    """A stretch of the timeline filled with silence or black, in seconds from the start."""

    participant_id: str | None = None
    kind: Literal["audio", "video", "both"] = "both"
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    reason: str = "no media"


class ConsentChange(_Model):
    """A participant's consent given or withdrawn, at a second of the timeline."""

    participant_id: str = Field(pattern=_OPAQUE)
    consent: Literal["given", "withdrawn"]
    at: float = Field(ge=0)


class E2eeChange(_Model):
    """The recorder joined the call's MLS group, followed a new epoch, or committed one."""

    kind: Literal["joined", "epoch", "committed", "removed"]
    epoch: int = Field(ge=0)
    safety_number: str = Field(pattern=r"^[0-9]{1,128}$")
    members: int = Field(ge=0)
    at: AwareDatetime


class E2eeRecord(_Model):
    """An end-to-end encrypted call: the recorder's membership and what it could open.
    Frames it could not open were never decoded; they are gaps with reason ``encrypted``."""

    changes: tuple[E2eeChange, ...] = ()
    frames: dict[str, int] = Field(default_factory=dict)


class CellEntry(_Model):
    """A participant's cell in the picture, in output pixels."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class SpeakerSwitch(_Model):
    """From timeline second ``at`` the large cell shows ``participant_id``."""

    at: float = Field(ge=0)
    participant_id: str = Field(pattern=_OPAQUE)


class LayoutRecord(_Model):
    """Where each participant is in the picture. ``cells``: one per slot (the order of
    ``sync.slots``) as they were at the start; the speaker layout moves them at each
    switch, the large cell going to the switch's participant."""

    mode: Literal["grid", "speaker"]
    fit: Literal["contain", "cover"]
    aspect: str = Field(pattern=r"^[1-9][0-9]?:[1-9][0-9]?$")
    cells: tuple[CellEntry, ...] = ()
    switches: tuple[SpeakerSwitch, ...] = ()


class ArchivedTrack(_Model):
    """One received track stored as it arrived, with what a composer needs to put it on
    the recording's timeline. The file keeps the sender's timing; ``anchors`` map it to
    the timeline as the live composite placed each frame: ``(file seconds, rtp seconds,
    timeline seconds)`` at the first frame and wherever the mapping moved (a frame at
    file second ``p`` is at ``p + t - f`` of the last anchor ``(f, r, t)`` with ``f <= p``)."""

    part_of: str = Field(pattern=_OPAQUE)
    """The recording (``recording_id``) the track belongs to."""
    number: int = Field(ge=1)
    participant_id: str = Field(pattern=_OPAQUE)
    role: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    slot: int = Field(ge=0)
    kind: Literal["audio", "video"]
    codec: str
    """As received (``video/VP8``, ``video/H264``, ``audio/opus``)."""
    timeline_origin: AwareDatetime
    """Wall-clock time of the recording's timeline second 0."""
    container: Literal["webm", "mp4"]
    clock: Literal["sender_reports", "arrival"]
    first_s: float | None = None
    last_s: float | None = None
    frames: int = Field(0, ge=0)
    keyframes: int = Field(0, ge=0)
    frames_before_keyframe: int = Field(0, ge=0)
    """Left out because the file, or a resumption after a pause, starts at a keyframe."""
    sizes: tuple[tuple[float, int, int], ...] = ()
    """``(timeline seconds, width, height)`` at the first picture and each change."""
    anchors: tuple[tuple[float, float, float], ...] = ()
    object_key: str | None = None
    sha256: str | None = Field(None, pattern=_SHA256)
    size: int | None = Field(None, ge=0)


class PartEntry(_Model):
    number: int = Field(ge=1)
    size: int = Field(ge=0)
    etag: str


class Verification(_Model):
    """How the stored object was checked against the spool before the spool was deleted."""

    size_ok: bool
    etag: Literal["match", "not comparable"]
    sha256_method: Literal["full-read", "part-md5-chain"]
    decode_start_ok: bool
    decode_end_ok: bool
    verified_at: AwareDatetime
    seconds: float


class StorageRecord(_Model):
    backend: Literal["s3", "local"]
    bucket: str | None = None
    object_key: str
    size: int
    sha256: str = Field(pattern=_SHA256)
    sha1: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    """For FHIR's ``Attachment.hash`` only; SHA-256 is the record's hash."""
    etag: str | None = None
    part_size: int
    parts: tuple[PartEntry, ...]
    encryption: Literal["sse-c", "none"]
    verification: Verification


class Custody(_Model):
    """What ties the manifest to the bytes and events behind it (``bot.custody``): the
    fragment chain over the object as it was written, the audit trail's last line, and
    how the manifest is signed. ``bot verify`` recomputes each."""

    fragments: int = Field(ge=0)
    fragment_chain: str = Field(pattern=_SHA256)
    audit_lines: int = Field(ge=0)
    audit_head: str = Field(pattern=_SHA256)
    signature: Literal["jws-detached", "unsigned"]
    signature_alg: Literal["EdDSA", "ES256"] | None = None
    key_id: str | None = None


class Manifest(_Model):
    schema_version: int = SCHEMA_VERSION
    consultation_id: str = Field(pattern=_OPAQUE)
    recording_id: str = Field(pattern=_OPAQUE)
    recorder_version: str = __version__
    participants: tuple[ParticipantEntry, ...] = ()
    tracks: tuple[TrackEntry, ...] = ()
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    duration_seconds: float | None = Field(None, ge=0)
    video: VideoInfo | None = None
    audio: AudioInfo | None = None
    gaps: tuple[Gap, ...] = ()
    require_consent: bool = False
    """Each participant's media entered the record only once their consent was given."""
    consent: tuple[ConsentChange, ...] = ()
    e2ee: E2eeRecord | None = None
    layout: LayoutRecord | None = None
    track: ArchivedTrack | None = None
    """Set when this record is one archived track (its own object)."""
    archive: tuple[ArchivedTrack, ...] = ()
    """The recording's tracks as they arrived, each a verified object of its own."""
    composed: bool = False
    """True when ``bot compose`` made this composite afterwards from ``archive``."""
    sync: dict[str, Any] = Field(default_factory=dict)
    recovered: bool = False
    """True when ``bot recover`` finished the recording after the recorder died."""
    storage: StorageRecord | None = None
    custody: Custody | None = None

    @field_validator("started_at", "ended_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)
