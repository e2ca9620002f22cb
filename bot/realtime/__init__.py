"""Cloudflare Realtime SFU API: an async client, its typed bodies and its errors."""

from bot.realtime.client import RealtimeClient
from bot.realtime.errors import (
    AppNotFoundError,
    AuthenticationError,
    InvalidRequestError,
    OfferRefusedError,
    RealtimeError,
    SessionGoneError,
    SessionNotReadyError,
    TrackError,
    TransientError,
)
from bot.realtime.models import (
    MAX_TRACKS_PER_CALL,
    NewSessionResponse,
    SessionDescription,
    SessionState,
    SimulcastPreference,
    TrackObject,
    TrackResult,
    TracksResponse,
    UpdateTrackObject,
)

__all__ = [
    "MAX_TRACKS_PER_CALL",
    "AppNotFoundError",
    "AuthenticationError",
    "InvalidRequestError",
    "NewSessionResponse",
    "OfferRefusedError",
    "RealtimeClient",
    "RealtimeError",
    "SessionDescription",
    "SessionGoneError",
    "SessionNotReadyError",
    "SessionState",
    "SimulcastPreference",
    "TrackError",
    "TrackObject",
    "TrackResult",
    "TracksResponse",
    "TransientError",
    "UpdateTrackObject",
]
