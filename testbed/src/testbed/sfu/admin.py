"""``POST /admin/faults`` and ``DELETE /admin/faults``: the fault API over HTTP, for a
test whose SFU runs in another process (``bot sfu``). Guarded by the app secret.

Bodies (JSON), one action each, answered ``200 {"pending": N}``:

- ``{"action": "fail_requests", "status": 503, "errorCode": "...", "errorDescription":
  "...", "operation": "new_tracks", "sessionId": "...", "times": 2}``
- ``{"action": "fail_track", "trackName": "...", "errorCode": "empty_track_error",
  "sessionId": "...", "times": 1}``
- ``{"action": "expire_session", "sessionId": "..."}``
- ``{"action": "stop_forwarding" | "collect_track", "sessionId": "...", "trackName": "..."}``
- ``{"action": "impair_downlink", "delayMs": 50, "jitterMs": 30, "reorder": 0.05,
  "corrupt": 0.01, "loss": 0.05}`` (all zero: a clean downlink again)

An unknown session or track is 404 ``not_found``; a bad body 400/406 as on the API.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from testbed.sfu.bodies import parse_body
from testbed.sfu.errors import ApiError, invalid_params
from testbed.sfu.faults import FaultInjector, Operation, TrackErrorCode

_FAULTS = web.AppKey("faults", FaultInjector)
_SECRET = web.AppKey("admin_secret", str)


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FailRequests(_Action):
    action: Literal["fail_requests"]
    status: int = Field(ge=400, le=599)
    errorCode: str = Field(min_length=1)
    errorDescription: str = "injected fault"
    operation: Operation | None = None
    sessionId: str | None = None
    times: int = Field(1, ge=1)


class FailTrack(_Action):
    action: Literal["fail_track"]
    trackName: str = Field(min_length=1)
    errorCode: TrackErrorCode
    sessionId: str | None = None
    times: int = Field(1, ge=1)


class ExpireSession(_Action):
    action: Literal["expire_session"]
    sessionId: str = Field(min_length=1)


class TrackAction(_Action):
    action: Literal["stop_forwarding", "collect_track"]
    sessionId: str = Field(min_length=1)
    trackName: str = Field(min_length=1)


class ImpairDownlink(_Action):
    action: Literal["impair_downlink"]
    delayMs: float = Field(0.0, ge=0, le=5000)
    jitterMs: float = Field(0.0, ge=0, le=5000)
    reorder: float = Field(0.0, ge=0, le=1)
    corrupt: float = Field(0.0, ge=0, le=1)
    loss: float = Field(0.0, ge=0, le=1)


_Fault = FailRequests | FailTrack | ExpireSession | TrackAction | ImpairDownlink


class _FaultBody(RootModel[_Fault]):
    """One fault, chosen by its ``action``."""

    root: Annotated[_Fault, Field(discriminator="action")]


def _parse(raw: bytes) -> _Fault:
    return parse_body(raw, _FaultBody).root


def add_admin_routes(app: web.Application, faults: FaultInjector, app_secret: str) -> None:
    app[_FAULTS] = faults
    app[_SECRET] = app_secret
    app.router.add_post("/admin/faults", _add_fault)
    app.router.add_delete("/admin/faults", _clear_faults)


def _check_secret(request: web.Request) -> None:
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {request.app[_SECRET]}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer app secret")


async def _add_fault(request: web.Request) -> web.Response:
    _check_secret(request)
    body = _parse(await request.read())
    faults = request.app[_FAULTS]
    try:
        match body:
            case FailRequests():
                faults.fail_requests(
                    body.status,
                    body.errorCode,
                    body.errorDescription,
                    operation=body.operation,
                    session_id=body.sessionId,
                    times=body.times,
                )
            case FailTrack():
                faults.fail_track(
                    body.trackName, body.errorCode, session_id=body.sessionId, times=body.times
                )
            case ExpireSession():
                faults.expire_session(body.sessionId)
            case TrackAction(action="stop_forwarding"):
                faults.stop_forwarding(body.sessionId, body.trackName)
            case TrackAction():
                faults.collect_track(body.sessionId, body.trackName)
            case ImpairDownlink():
                faults.impair_downlink(
                    body.delayMs / 1000, body.jitterMs / 1000, body.reorder, body.corrupt, body.loss
                )
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ValueError as exc:
        raise invalid_params(str(exc)) from None
    return web.json_response({"pending": faults.pending})


async def _clear_faults(request: web.Request) -> web.Response:
    _check_secret(request)
    request.app[_FAULTS].clear()
    return web.json_response({"pending": 0})
