"""The recorder's HTTP face: live control, health, readiness and metrics.

Control routes (``/v1/...``) need a bearer JWT allowed the action (``bot.control.auth``);
every attempt, allowed or refused, becomes an audit event with the token's subject as
the actor. ``/healthz`` answers while the process serves HTTP; ``/readyz`` only while the
recorder is connected and recording, so an orchestrator can tell "alive" from "doing its
job". ``/metrics`` is open by default (loopback), or needs a token allowed ``status``.

The server runs on the recorder's event loop and only calls the recorder's public
methods; a stop request returns 202 at once and the recorder finishes, uploads and
verifies on its own.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import pydantic
import structlog
from aiohttp import web

from bot.config import ConfigError, ControlSettings, Participant
from bot.control.auth import Action, AuthError, Authorizer, Caller
from bot.observe.audit import AuditLog
from bot.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bot.observe.metrics import Metrics
from bot.realtime import RealtimeError

if TYPE_CHECKING:
    from bot.recording import Recorder

log = structlog.get_logger("bot.control")

MAX_BODY: Final = 64 * 1024
Handler = Callable[[web.Request, Caller], Awaitable[web.Response]]


class ControlError(Exception):
    """A refused control call that is not about authorization (bad input, wrong state)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def _error(status: int, error: str, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status, headers=headers)


class ControlServer:
    """Serves one recorder; ``start`` binds, ``stop`` closes. ``url`` is the bound address."""

    def __init__(
        self,
        recorder: Recorder,
        settings: ControlSettings,
        audit: AuditLog,
        metrics: Metrics | None = None,
    ) -> None:
        self._recorder = recorder
        self._settings = settings
        self._audit = audit
        self._metrics = metrics
        self._auth = Authorizer(settings, recorder.consultation_id)
        self._stop_requested = False
        self._runner: web.AppRunner | None = None
        self.url = ""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/tracks", self._guard(Action.ADD, self._add))
        app.router.add_delete(
            "/v1/participants/{participant_id}", self._guard(Action.DROP, self._drop)
        )
        app.router.add_post("/v1/pause", self._guard(Action.PAUSE, self._pause))
        app.router.add_post("/v1/resume", self._guard(Action.RESUME, self._resume))
        app.router.add_post("/v1/stop", self._guard(Action.STOP, self._stop))
        app.router.add_get("/v1/status", self._guard(Action.STATUS, self._status))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_route)
        self._app = app

    async def start(self) -> str:
        runner = web.AppRunner(app=self._app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"control API cannot listen on {self._settings.host}:{self._settings.port}: "
                f"{exc.strerror}; set control.port (0 picks a free port)"
            ) from None
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        log.info("control.listening", url=self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- readiness ---------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Recording and connected: what ``/readyz`` reports, with the reason if not."""
        status = self._recorder.status()
        if not status.started:
            return False, "starting"
        if self._stop_requested or status.stopping:
            return False, "stopping"
        if status.media is None or not status.media.alive:
            return False, "media pipeline stopped"
        if status.transport is None or status.transport.failed:
            return False, "transport failed"
        if status.tracks and not status.transport.connected:
            return False, "connecting"
        return True, "recording"

    # -- plumbing ----------------------------------------------------------------------

    def _guard(
        self, action: Action, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Authorize, run, audit: every control call goes through here exactly once."""

        async def route(request: web.Request) -> web.Response:
            try:
                caller = self._auth.authorize(request.headers.get("Authorization"), action)
            except AuthError as exc:
                self._audit.record(
                    "control.refused",
                    actor=exc.subject,
                    action=action.value,
                    status=exc.status,
                    reason=exc.reason,
                )
                log.warning(
                    "control.refused", action=action.value, status=exc.status, reason=exc.reason
                )
                self._count(action, exc.status)
                headers = (
                    {"WWW-Authenticate": 'Bearer realm="recorder"'} if exc.status == 401 else {}
                )
                return _error(exc.status, exc.error, exc.reason, **headers)
            try:
                if action is not Action.STATUS:
                    self._require_recording()
                response = await handler(request, caller)
            except ControlError as exc:
                self._audit.record(
                    "control.failed",
                    actor=caller.subject,
                    role=caller.role,
                    action=action.value,
                    status=exc.status,
                    reason=exc.reason,
                )
                self._count(action, exc.status)
                return _error(exc.status, exc.error, exc.reason)
            self._count(action, response.status)
            return response

        return route

    def _require_recording(self) -> None:
        if not self._recorder.started.is_set():
            raise ControlError(409, "not_recording", "the recorder has not started recording yet")
        if self._stop_requested or self._recorder.stopping:
            raise ControlError(409, "stopping", "the recording is stopping")

    def _count(self, action: Action, status: int) -> None:
        if self._metrics is not None:
            self._metrics.control_requests.labels(action.value, str(status)).inc()

    # -- control routes ----------------------------------------------------------------

    async def _add(self, request: web.Request, caller: Caller) -> web.Response:
        participant = await _participant(request)
        try:
            failures = await self._recorder.add_participant(participant)
        except ConfigError as exc:  # no free cell for that role
            raise ControlError(409, "no_free_cell", str(exc)) from None
        except RealtimeError as exc:
            self._audit.record(
                "error",
                actor=caller.subject,
                action="add",
                participant_id=participant.id,
                error=type(exc).__name__,
            )
            raise ControlError(502, "realtime_failed", str(exc)) from None
        failed = [
            {"track": f.trackName, "error_code": f.errorCode, "reason": f.errorDescription}
            for f in failures
        ]
        failed_names = {f.trackName for f in failures}
        pulled = [str(t) for t in participant.tracks if t.track_name not in failed_names]
        self._audit.record(
            "participant.added",
            actor=caller.subject,
            role=caller.role,
            participant_id=participant.id,
            participant_role=participant.role,
            tracks_pulled=pulled,
            tracks_failed=[f["track"] for f in failed],
        )
        status = 200 if pulled else 502
        return web.json_response(
            {"participant_id": participant.id, "pulled": pulled, "failed": failed}, status=status
        )

    async def _drop(self, request: web.Request, caller: Caller) -> web.Response:
        participant_id = request.match_info["participant_id"]
        try:
            await self._recorder.drop_participant(participant_id)
        except KeyError:
            raise ControlError(
                404, "unknown_participant", "no such participant is recorded"
            ) from None
        except RealtimeError as exc:
            raise ControlError(502, "realtime_failed", str(exc)) from None
        self._audit.record(
            "participant.dropped",
            actor=caller.subject,
            role=caller.role,
            participant_id=participant_id,
        )
        return web.json_response({"participant_id": participant_id, "dropped": True})

    async def _pause(self, _: web.Request, caller: Caller) -> web.Response:
        changed = not self._recorder.status().paused
        if changed:
            self._recorder.pause()
        self._audit.record(
            "recording.paused", actor=caller.subject, role=caller.role, changed=changed
        )
        return web.json_response({"paused": True, "changed": changed})

    async def _resume(self, _: web.Request, caller: Caller) -> web.Response:
        changed = self._recorder.status().paused
        if changed:
            self._recorder.resume()
        self._audit.record(
            "recording.resumed", actor=caller.subject, role=caller.role, changed=changed
        )
        return web.json_response({"paused": False, "changed": changed})

    async def _stop(self, _: web.Request, caller: Caller) -> web.Response:
        self._stop_requested = True
        self._recorder.stop("stop_requested")
        self._audit.record("recording.stop_requested", actor=caller.subject, role=caller.role)
        return web.json_response({"stopping": True}, status=202)

    async def _status(self, _: web.Request, caller: Caller) -> web.Response:
        self._audit.record("status.read", actor=caller.subject, role=caller.role)
        ready, state = self.readiness()
        body = {**self._recorder.status().as_dict(), "ready": ready, "state": state}
        return web.json_response(body)

    # -- open routes -------------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, state = self.readiness()
        return web.json_response({"ready": ready, "state": state}, status=200 if ready else 503)

    async def _metrics_route(self, request: web.Request) -> web.Response:
        if self._settings.metrics_require_auth:
            try:
                self._auth.authorize(request.headers.get("Authorization"), Action.STATUS)
            except AuthError as exc:
                self._audit.record(
                    "control.refused",
                    actor=exc.subject,
                    action="metrics",
                    status=exc.status,
                    reason=exc.reason,
                )
                return _error(exc.status, exc.error, exc.reason)
        if self._metrics is None:
            return _error(404, "not_found", "metrics are not enabled")
        await self._metrics.refresh()
        body = self._metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response


async def _participant(request: web.Request) -> Participant:
    """The add body: ``{"participant_id", "role", "tracks": ["SESSION/TRACK", ...]}``."""
    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ControlError(400, "bad_request", "body must be JSON") from None
    except web.HTTPRequestEntityTooLarge:
        raise ControlError(413, "too_large", f"body must be under {MAX_BODY} bytes") from None
    if not isinstance(body, dict):
        raise ControlError(400, "bad_request", "body must be a JSON object")
    unknown = sorted(set(body) - {"participant_id", "role", "tracks"})
    if unknown:
        raise ControlError(400, "bad_request", f"unknown fields {unknown}")
    tracks = body.get("tracks")
    if not isinstance(tracks, list) or not tracks or not all(isinstance(t, str) for t in tracks):
        raise ControlError(
            400, "bad_request", "tracks must be a non-empty list of SESSION_ID/TRACK_NAME"
        )
    try:
        return Participant(id=body.get("participant_id"), role=body.get("role"), tracks=tracks)
    except (pydantic.ValidationError, ValueError) as exc:
        reasons = (
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            if isinstance(exc, pydantic.ValidationError)
            else str(exc)
        )
        raise ControlError(400, "bad_request", reasons) from None
