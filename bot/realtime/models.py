"""Request and response bodies of the Cloudflare Realtime SFU API (2024-05-21 schema).

Field names are the wire names (camelCase) so a body can be checked against Cloudflare's
documentation at a glance. Unknown response fields are kept, never rejected: Cloudflare
adds fields without a version bump.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TRACKS_PER_CALL = 64


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SessionDescription(_Body):
    type: Literal["offer", "answer"]
    sdp: str


class SimulcastPreference(_Body):
    preferredRid: str | None = None
    priorityOrdering: Literal["none", "asciibetical"] | None = None
    ridNotAvailable: Literal["none", "asciibetical"] | None = None


class TrackObject(_Body):
    """A track in a request: ``local`` to publish, ``remote`` to pull."""

    location: Literal["local", "remote"]
    trackName: str
    mid: str | None = None
    sessionId: str | None = None
    kind: Literal["audio", "video"] | None = None
    bidirectionalMediaStream: bool | None = None
    simulcast: SimulcastPreference | None = None


class TrackResult(_Body):
    """A track in a response; a failure inside an HTTP 200 carries ``errorCode``."""

    trackName: str | None = None
    mid: str | None = None
    sessionId: str | None = None
    location: str | None = None
    errorCode: str | None = None
    errorDescription: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errorCode)


class NewSessionResponse(_Body):
    sessionId: str
    sessionDescription: SessionDescription | None = None


class TracksRequest(_Body):
    tracks: list[TrackObject] = Field(max_length=MAX_TRACKS_PER_CALL)
    sessionDescription: SessionDescription | None = None
    autoDiscover: bool | None = None


class TracksResponse(_Body):
    requiresImmediateRenegotiation: bool = False
    tracks: list[TrackResult] = []
    sessionDescription: SessionDescription | None = None
    errorCode: str | None = None
    errorDescription: str | None = None


class RenegotiateRequest(_Body):
    sessionDescription: SessionDescription


class CloseTrackObject(_Body):
    mid: str


class CloseTracksRequest(_Body):
    tracks: list[CloseTrackObject] = Field(max_length=MAX_TRACKS_PER_CALL)
    force: bool = True
    sessionDescription: SessionDescription | None = None


class UpdateTrackObject(_Body):
    location: Literal["local", "remote"] = "remote"
    mid: str
    trackName: str | None = None
    sessionId: str | None = None
    simulcast: SimulcastPreference | None = None


class UpdateTracksRequest(_Body):
    tracks: list[UpdateTrackObject] = Field(max_length=MAX_TRACKS_PER_CALL)


class TrackState(_Body):
    location: str | None = None
    mid: str | None = None
    trackName: str | None = None
    sessionId: str | None = None
    status: Literal["active", "inactive"] | str | None = None


class SessionState(_Body):
    tracks: list[TrackState] = []
    dataChannels: list[dict[str, object]] = []


class EmptyResponse(_Body):
    """``{}``: what renegotiate answers on success."""
