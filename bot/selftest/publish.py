"""The ``auth`` and ``publish`` steps: the synthetic participant reaching Cloudflare.

Owns the ``Publisher`` the selftest is handed (the CLI builds the synthetic participant,
so this package never imports it), the client that notes when Cloudflare accepted the
app id and secret, and the advice a refused session or publish ends with. May import
the foundation and ``bot.realtime``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from bot.config import Participant, TrackRef
from bot.exitcodes import ExitCode
from bot.realtime import (
    AppNotFoundError,
    AuthenticationError,
    NewSessionResponse,
    RealtimeClient,
    RealtimeError,
)
from bot.selftest.report import StepLog

PARTICIPANT_ROLE = "clinician"
PUBLISH_SETTLE = 1.0
"""Seconds between the publisher connecting and the pull: Cloudflare answers a pull of a
track with no media yet with ``empty_track_error``; the selftest is about the path, not
that race (in real calls the recorder pulls such a track again)."""


class Publisher(Protocol):
    """What the selftest needs of a publishing participant (``SyntheticParticipant``)."""

    @property
    def track_refs(self) -> dict[str, str]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


PublisherFactory = Callable[[RealtimeClient], Publisher]


class TimedClient(RealtimeClient):
    """Notes when the first ``sessions/new`` succeeded: that call is where Cloudflare
    checks the app id and secret, so it ends ``auth`` and starts ``publish``."""

    session_created: float | None = None

    async def new_session(self) -> NewSessionResponse:
        response = await super().new_session()
        if self.session_created is None:
            self.session_created = time.monotonic()
        return response


async def auth_and_publish(log: StepLog, client: TimedClient, publisher: Publisher) -> bool:
    """Start the publisher; settle ``auth`` and ``publish``; True once it is sending."""
    began = time.monotonic()
    error: Exception | None = None
    try:
        await publisher.start()
    except Exception as exc:  # the publisher's own failures are testbed classes
        error = exc
    created = client.session_created
    if created is None:
        assert error is not None
        log.fail("auth", _api_advice(error), _auth_code(error), began=began)
        return False
    log.settle(
        "auth",
        "pass",
        "session created: app id and secret accepted",
        began=began,
        until=created,
    )
    if error is not None:
        log.fail("publish", _publish_advice(error), _auth_code(error), began=created)
        return False
    await asyncio.sleep(PUBLISH_SETTLE)
    log.settle(
        "publish",
        "pass",
        "synthetic participant connected, sending audio and video",
        began=created,
    )
    return True


def published_participant(publisher: Publisher) -> Participant:
    """The participant the recorder is told to pull: the publisher's audio and video."""
    refs = publisher.track_refs
    return Participant(
        id="selftest",
        role=PARTICIPANT_ROLE,
        tracks=tuple(TrackRef.parse(refs[kind]) for kind in ("audio", "video")),
    )


def _auth_code(error: Exception) -> ExitCode:
    """Exit 3 when Cloudflare refused the app id or secret, 4 for anything else."""
    refused = isinstance(error, AuthenticationError | AppNotFoundError) or (
        isinstance(error, RealtimeError) and error.status == 403
    )
    return ExitCode.REALTIME_AUTH if refused else ExitCode.REALTIME


def _api_advice(error: Exception) -> str:
    if not isinstance(error, RealtimeError):
        return f"creating a session failed: {type(error).__name__}: {error}"
    if error.status is None:
        return f"{error}: check realtime.base_url and that HTTPS to it is reachable"
    if error.status == 403:
        return f"{error}: check realtime.app_id and BOT_REALTIME_APP_SECRET"
    return str(error)


def _publish_advice(error: Exception) -> str:
    if isinstance(error, RealtimeError):
        return (
            f"the SFU refused the synthetic participant's tracks: {error}; run with "
            "--verbose to see the API's reply"
        )
    return (
        f"the synthetic participant could not publish: {error}; check that UDP to "
        "Cloudflare is open (realtime.ice_servers; a TURN server behind strict firewalls)"
    )
