"""Request bodies the SFU accepts, validated strictly but ignoring unknown fields.

A body that is not JSON (or not an object) is ``400 decoding_error``; a JSON object with a
bad field, value or limit is ``406 invalid_params``, as Cloudflare answers.
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from testbed.sfu.errors import decoding_error, invalid_params

MAX_TRACKS_PER_CALL = 64

BodyT = TypeVar("BodyT", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class SessionDescription(_Body):
    type: Literal["offer", "answer"]
    sdp: str = Field(min_length=1)


class Simulcast(_Body):
    preferredRid: str | None = None
    priorityOrdering: Literal["none", "asciibetical"] | None = None
    ridNotAvailable: Literal["none", "asciibetical"] | None = None


class TrackIn(_Body):
    location: Literal["local", "remote"]
    trackName: str | None = Field(default=None, min_length=1)
    mid: str | None = None
    sessionId: str | None = None
    kind: Literal["audio", "video"] | None = None
    bidirectionalMediaStream: bool | None = None
    simulcast: Simulcast | None = None


class NewSessionBody(_Body):
    sessionDescription: SessionDescription | None = None


class NewTracksBody(_Body):
    tracks: list[TrackIn] = Field(default_factory=list, max_length=MAX_TRACKS_PER_CALL)
    sessionDescription: SessionDescription | None = None
    autoDiscover: bool = False


class RenegotiateBody(_Body):
    sessionDescription: SessionDescription


class CloseTrackIn(_Body):
    mid: str = Field(min_length=1)


class CloseTracksBody(_Body):
    tracks: list[CloseTrackIn] = Field(min_length=1, max_length=MAX_TRACKS_PER_CALL)
    force: bool = False
    sessionDescription: SessionDescription | None = None


class UpdateTrackIn(_Body):
    location: Literal["local", "remote"] = "remote"
    mid: str = Field(min_length=1)
    trackName: str | None = Field(default=None, min_length=1)
    sessionId: str | None = None
    simulcast: Simulcast | None = None


class UpdateTracksBody(_Body):
    tracks: list[UpdateTrackIn] = Field(min_length=1, max_length=MAX_TRACKS_PER_CALL)


def parse_body(raw: bytes, model: type[BodyT]) -> BodyT:
    """Decode and validate a request body; an empty body is an empty object."""
    if not raw.strip():
        data: object = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise decoding_error("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise decoding_error("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        # The message names the field and the rule, never the submitted value.
        raise invalid_params(f"{where}: {first['msg']}") from None
