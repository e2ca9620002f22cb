"""Async client for the Cloudflare Realtime SFU API.

One instance per app. Every call has a timeout; transient failures (429, 5xx, transient
error codes, network errors, 425 while a transport comes up) are retried with capped
exponential backoff and full jitter; caller errors never are. Mutations on one session
run strictly one at a time because the SFU answers an overlapping mutation with 406.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

import httpx
import structlog
from pydantic import BaseModel, ValidationError

from bot import __version__
from bot.config import ConfigError, RealtimeSettings
from bot.realtime.errors import (
    RealtimeError,
    SessionNotReadyError,
    TrackError,
    TransientError,
    error_for,
)
from bot.realtime.models import (
    CloseTrackObject,
    CloseTracksRequest,
    EmptyResponse,
    NewSessionResponse,
    RenegotiateRequest,
    SessionDescription,
    SessionState,
    TrackObject,
    TracksRequest,
    TracksResponse,
    UpdateTrackObject,
    UpdateTracksRequest,
)

log = structlog.get_logger("bot.realtime")

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
BACKOFF_BASE = 0.25
"""Seconds before the first retry; each next waits up to twice as long (full jitter)."""
_BACKOFF_CAP = 4.0

ResponseT = TypeVar("ResponseT", bound=BaseModel)
AnswerFn = Callable[[SessionDescription], Awaitable[SessionDescription]]


class RealtimeClient:
    """Typed calls for one Cloudflare Realtime app; use as an async context manager."""

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        *,
        base_url: str = "https://rtc.live.cloudflare.com/v1",
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff_base: float = BACKOFF_BASE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not app_id:
            raise ValueError("realtime app id is empty: set realtime.app_id or BOT_REALTIME_APP_ID")
        if not app_secret:
            raise ValueError(
                "realtime app secret is empty: set BOT_REALTIME_APP_SECRET "
                "(keep it out of config files in version control)"
            )
        self._app_path = f"/apps/{app_id}"
        self._secret = app_secret
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {app_secret}",
                "User-Agent": f"consultation-recorder/{__version__}",
            },
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: RealtimeSettings) -> Self:
        """A client for the configured app; ``ConfigError`` naming what is missing."""
        try:
            return cls(
                settings.app_id,
                settings.app_secret.get_secret_value(),
                base_url=settings.base_url,
                timeout=settings.request_timeout,
                max_retries=settings.max_retries,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- endpoints -------------------------------------------------------------------

    async def new_session(self) -> NewSessionResponse:
        """``POST /sessions/new`` (201): an empty session; tracks come later."""
        return await self._call(
            "create session", "POST", "/sessions/new", NewSessionResponse, expect=201
        )

    async def new_tracks(
        self,
        session_id: str,
        tracks: Sequence[TrackObject],
        offer: SessionDescription | None = None,
        *,
        auto_discover: bool | None = None,
    ) -> TracksResponse:
        """``POST /sessions/{id}/tracks/new``: publish (with an offer) or pull (without).

        Per-track failures come back inside the 200 and stay on the result; callers read
        ``result.tracks[i].failed`` or use ``pull_tracks``, which raises them.
        """
        body = TracksRequest(
            tracks=list(tracks), sessionDescription=offer, autoDiscover=auto_discover
        )
        async with self.mutation(session_id):
            return await self._new_tracks(session_id, body)

    async def renegotiate(self, session_id: str, answer: SessionDescription) -> None:
        """``PUT /sessions/{id}/renegotiate``: answer an offer the SFU made."""
        async with self.mutation(session_id):
            await self._renegotiate(session_id, answer)

    async def close_tracks(
        self,
        session_id: str,
        mids: Sequence[str],
        *,
        force: bool = True,
        offer: SessionDescription | None = None,
    ) -> TracksResponse:
        """``PUT /sessions/{id}/tracks/close``; unknown mids fail per item."""
        body = CloseTracksRequest(
            tracks=[CloseTrackObject(mid=m) for m in mids], force=force, sessionDescription=offer
        )
        async with self.mutation(session_id):
            return await self._call(
                "close tracks",
                "PUT",
                f"/sessions/{session_id}/tracks/close",
                TracksResponse,
                body=body,
            )

    async def update_tracks(
        self, session_id: str, tracks: Sequence[UpdateTrackObject]
    ) -> TracksResponse:
        """``PUT /sessions/{id}/tracks/update``: simulcast layer or transceiver reuse."""
        async with self.mutation(session_id):
            return await self._call(
                "update tracks",
                "PUT",
                f"/sessions/{session_id}/tracks/update",
                TracksResponse,
                body=UpdateTracksRequest(tracks=list(tracks)),
            )

    async def session_state(self, session_id: str) -> SessionState:
        """``GET /sessions/{id}``; ``active`` does not prove packets flow."""
        return await self._call("get session", "GET", f"/sessions/{session_id}", SessionState)

    async def pull_tracks(
        self, session_id: str, tracks: Sequence[TrackObject], answer: AnswerFn
    ) -> TracksResponse:
        """Pull remote tracks and answer the SFU's offer, as one mutation.

        The SFU refuses any other mutation until its offer is answered, so the pull and
        the ``renegotiate`` hold the session's lock together. An offer that comes back is
        always answered, even when every track failed (a response may carry per-track
        errors and an offer at once), so the session is never left with a pending offer.
        Raises ``TrackError`` when every track failed; partial failures stay on the result
        for the caller to report.
        """
        async with self.mutation(session_id):
            result = await self._new_tracks(session_id, TracksRequest(tracks=list(tracks)))
            offer = result.sessionDescription
            if offer is not None and offer.type == "offer":
                await self._renegotiate(session_id, await answer(offer))
            if all(t.failed for t in result.tracks):
                raise TrackError("pull tracks", result.tracks)
            return result

    @asynccontextmanager
    async def mutation(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's mutation lock (the SFU allows one mutation at a time)."""
        async with self._locks[session_id]:
            yield

    # -- plumbing --------------------------------------------------------------------

    async def _new_tracks(self, session_id: str, body: TracksRequest) -> TracksResponse:
        return await self._call(
            "new tracks", "POST", f"/sessions/{session_id}/tracks/new", TracksResponse, body=body
        )

    async def _renegotiate(self, session_id: str, answer: SessionDescription) -> None:
        await self._call(
            "renegotiate",
            "PUT",
            f"/sessions/{session_id}/renegotiate",
            EmptyResponse,
            body=RenegotiateRequest(sessionDescription=answer),
        )

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        response_model: type[ResponseT],
        *,
        body: BaseModel | None = None,
        expect: int = 200,
    ) -> ResponseT:
        payload = body.model_dump(exclude_none=True) if body is not None else None
        attempt = 0
        while True:
            try:
                data = await self._send(operation, method, path, payload, expect)
                try:
                    return response_model.model_validate(data)
                except ValidationError as exc:
                    raise RealtimeError(
                        operation, expect, "invalid_response", _summarize(exc)
                    ) from None
            except (TransientError, SessionNotReadyError) as exc:
                if attempt >= self._max_retries:
                    raise
                delay = random.uniform(0, min(_BACKOFF_CAP, self._backoff_base * 2**attempt))
                attempt += 1
                log.warning(
                    "realtime.retry",
                    operation=operation,
                    status=exc.status,
                    error_code=exc.error_code,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                )
                await asyncio.sleep(delay)

    async def _send(self, operation: str, method: str, path: str, payload: Any, expect: int) -> Any:
        try:
            async with self._http.stream(method, self._app_path + path, json=payload) as response:
                raw = bytearray()
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise RealtimeError(
                            operation,
                            response.status_code,
                            "invalid_response",
                            f"response larger than {MAX_RESPONSE_BYTES} bytes",
                        )
                status = response.status_code
        except httpx.TimeoutException:
            raise TransientError(operation, None, "timeout", "no answer in time") from None
        except httpx.TransportError as exc:
            raise TransientError(operation, None, "network_error", type(exc).__name__) from None
        data = _decode_json(bytes(raw))
        if status not in (expect, 200, 201) or (isinstance(data, dict) and data.get("errorCode")):
            code = data.get("errorCode") if isinstance(data, dict) else None
            description = data.get("errorDescription") if isinstance(data, dict) else None
            if isinstance(description, str):
                # A server (or proxy) that echoes request headers must not leak the secret
                # into an exception message or a log line.
                description = description.replace(self._secret, "[redacted]")
            if status in (200, 201) and not code:
                code = "unexpected_status"
            raise error_for(operation, status, code, description)
        if data is None:
            if status in (200, 201) and raw.strip() == b"":
                return {}
            raise RealtimeError(operation, status, "invalid_response", "body is not JSON")
        return data


def _decode_json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _summarize(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"response field {where or '(body)'}: {first['msg']}"
