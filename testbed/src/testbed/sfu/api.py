"""HTTP routes of the local SFU, answering as Cloudflare Realtime's API does.

Every route exists under ``/v1/apps/{appId}/...`` and ``/apps/{appId}/...`` (Cloudflare's
own clients use both); unknown query parameters are ignored. Mutations on one session run
strictly one at a time: a second one while the first is in flight, or while an SFU offer
awaits its answer, is refused with 406 and changes nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from testbed.sfu.admin import add_admin_routes
from testbed.sfu.bodies import (
    CloseTracksBody,
    NewSessionBody,
    NewTracksBody,
    RenegotiateBody,
    UpdateTracksBody,
    parse_body,
)
from testbed.sfu.call_page import add_call_page
from testbed.sfu.errors import ApiError, invalid_params
from testbed.sfu.faults import FaultInjector
from testbed.sfu.registry import SessionRegistry
from testbed.sfu.session import SfuSession

log = structlog.get_logger("bot.sfu")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REGISTRY = web.AppKey("registry", SessionRegistry)
_APP_ID = web.AppKey("app_id", str)
_APP_SECRET = web.AppKey("app_secret", str)


def build_app(registry: SessionRegistry, app_id: str, app_secret: str) -> web.Application:
    app = web.Application(middlewares=[_errors_as_json, _authorize, _inject_faults])
    app[_REGISTRY] = registry
    app[_APP_ID] = app_id
    app[_APP_SECRET] = app_secret
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/sessions/new", _new_session),
        ("POST", "/sessions/{session_id}/tracks/new", _new_tracks),
        ("PUT", "/sessions/{session_id}/renegotiate", _renegotiate),
        ("PUT", "/sessions/{session_id}/tracks/close", _close_tracks),
        ("PUT", "/sessions/{session_id}/tracks/update", _update_tracks),
        ("GET", "/sessions/{session_id}", _session_state),
        ("POST", "/sessions/{session_id}/datachannels/establish", _data_channels),
        ("POST", "/sessions/{session_id}/datachannels/new", _data_channels),
        ("PUT", "/sessions/{session_id}/datachannels/update", _data_channels),
        ("PUT", "/sessions/{session_id}/datachannels/close", _data_channels),
    ]
    for prefix in ("/v1/apps/{app_id}", "/apps/{app_id}"):
        for method, path, handler in routes:
            app.router.add_route(method, prefix + path, handler)
    add_call_page(app, app_id, app_secret)
    add_admin_routes(app, registry.faults, app_secret)
    return app


def _error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"errorCode": code, "errorDescription": description}, status=status)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.description)
    except web.HTTPNotFound:
        return _error(404, "not_found", "no such endpoint")
    except web.HTTPMethodNotAllowed:
        return _error(405, "invalid_params", "method not allowed on this endpoint")


@web.middleware
async def _authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 for an unknown app id (checked first: there is no secret to compare with), then
    401 unless the bearer secret matches. Both statuses are unverified on Cloudflare."""
    app_id = request.match_info.get("app_id")
    if app_id is None:
        return await handler(request)
    if not hmac.compare_digest(app_id.encode(), request.app[_APP_ID].encode()):
        raise ApiError(404, "not_found", "app not found")
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {request.app[_APP_SECRET]}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer app secret")
    return await handler(request)


@web.middleware
async def _inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An injected HTTP fault answers instead of the call (after authentication, as a
    real SFU's overload or expiry answers would), so a retry finds nothing changed."""
    operation = _OPERATIONS.get(request.match_info.handler)
    if operation is None:
        return await handler(request)
    faults: FaultInjector = request.app[_REGISTRY].faults
    fault = faults.take_http(operation, request.match_info.get("session_id"))
    if fault is None:
        return await handler(request)
    raise ApiError(fault.status, fault.error_code, fault.description)


def _session(request: web.Request) -> SfuSession:
    return request.app[_REGISTRY].get(request.match_info["session_id"])


class _Mutation:
    """The per-session guard: refuses (406) instead of queueing an overlapping mutation."""

    def __init__(self, session: SfuSession, *, renegotiation: bool = False) -> None:
        self._session = session
        self._renegotiation = renegotiation

    async def __aenter__(self) -> SfuSession:
        session = self._session
        if session.guard.locked():
            raise invalid_params("another mutation on this session is in progress")
        if session.awaiting_answer and not self._renegotiation:
            raise invalid_params(
                "an SFU offer awaits its answer: PUT renegotiate before another change"
            )
        await session.guard.acquire()
        return session

    async def __aexit__(self, *exc: object) -> None:
        self._session.guard.release()


def _ok(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def _new_session(request: web.Request) -> web.Response:
    body = parse_body(await request.read(), NewSessionBody)
    registry = request.app[_REGISTRY]
    session = registry.create()
    if body.sessionDescription is None:
        return _ok({"sessionId": session.id}, status=201)
    try:
        async with _Mutation(session):
            answer = await session.answer_offer(body.sessionDescription)
    except ApiError:
        await registry.discard(session)
        raise
    return _ok(
        {"sessionId": session.id, "sessionDescription": {"type": "answer", "sdp": answer}},
        status=201,
    )


async def _new_tracks(request: web.Request) -> web.Response:
    session = _session(request)
    body = parse_body(await request.read(), NewTracksBody)
    locations = {t.location for t in body.tracks}
    if len(locations) > 1:
        raise invalid_params("keep one call all local or all remote tracks")
    if not body.tracks and not body.autoDiscover:
        raise invalid_params("tracks is empty")
    async with _Mutation(session):
        await session.ready_for_mutation()
        if locations == {"remote"}:
            return _ok(await session.pull(body.tracks, body.sessionDescription))
        return _ok(await session.publish(body.tracks, body.sessionDescription, body.autoDiscover))


async def _renegotiate(request: web.Request) -> web.Response:
    session = _session(request)
    body = parse_body(await request.read(), RenegotiateBody)
    async with _Mutation(session, renegotiation=True):
        await session.renegotiate(body.sessionDescription)
    return _ok({})


async def _close_tracks(request: web.Request) -> web.Response:
    session = _session(request)
    body = parse_body(await request.read(), CloseTracksBody)
    async with _Mutation(session):
        await session.ready_for_mutation()
        mids = [t.mid for t in body.tracks]
        return _ok(await session.close_tracks(mids, body.force, body.sessionDescription))


async def _update_tracks(request: web.Request) -> web.Response:
    session = _session(request)
    body = parse_body(await request.read(), UpdateTracksBody)
    async with _Mutation(session):
        await session.ready_for_mutation()
        return _ok(await session.update_tracks(body.tracks))


async def _session_state(request: web.Request) -> web.Response:
    return _ok(_session(request).state())


async def _data_channels(request: web.Request) -> web.Response:
    """Data channels are out of this SFU's scope: 501 says so plainly, where an empty 200
    would let a caller believe a channel exists."""
    _session(request)
    raise ApiError(501, "not_implemented", "data channels are not supported by the local SFU")


_OPERATIONS: dict[object, str] = {
    _new_session: "new_session",
    _new_tracks: "new_tracks",
    _renegotiate: "renegotiate",
    _close_tracks: "close_tracks",
    _update_tracks: "update_tracks",
    _session_state: "session_state",
}
