"""The recorder's HTTP face: live control, health, readiness and metrics.

Control routes (``/v1/...``) need a bearer JWT allowed the action (``bot.control.auth``).
One middleware sees every request whatever becomes of it: it answers in JSON even when a
handler fails (never a traceback), counts the request by route and status, and writes the
request's one audit event with the token's subject as the actor, the route, method, status
and outcome. That event is the action's own (``participant.added``, ``recording.paused``,
...) or ``control.refused`` (no token allowed to do this), ``control.failed`` (bad input,
wrong state) or ``control.error`` (a fault here); caller input in it is bounded
(``bot.control.bounds``). Probes answered as such (``/healthz``, ``/readyz``, ``/metrics``)
are counted, not audited: an orchestrator polls them and they change nothing.

A request aiohttp's HTTP parser refuses (a header over its limit, bytes that are not HTTP)
never reaches the middleware; the connection handler answers, audits and logs it instead,
without aiohttp's habit of quoting the offending bytes, a token's first hundred included.

``/healthz`` answers while the process serves HTTP; ``/readyz`` only while the recorder
is connected and recording, so an orchestrator can tell "alive" from "doing its job".
``/metrics`` is open by default (loopback), or needs a token allowed ``status``.

The server runs on the recorder's event loop and only calls the recorder's public
methods; a stop request returns 202 at once and the recorder finishes, uploads and
verifies on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import hdrs, web

from bot.config import ConfigError, ControlSettings
from bot.control.answers import (
    UNPARSED,
    Answer,
    Connection,
    ControlError,
    Ledger,
    crashed,
    refusal,
)
from bot.control.auth import (
    MAX_AUTHORIZATION,
    UNAUTHENTICATED,
    Action,
    AuthError,
    Authorizer,
    Caller,
)
from bot.control.bodies import MAX_BODY, read_consent, read_participant
from bot.control.e2ee_routes import E2eeRoutes
from bot.custody.audit import AuditLog
from bot.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bot.observe.metrics import Metrics
from bot.realtime import RealtimeError

if TYPE_CHECKING:
    from bot.recording import Recorder

log = structlog.get_logger("bot.control")

UNMATCHED: Final = "unmatched"
"""The route of a request no route serves (its path is never logged: it is caller text)."""
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request, Caller], Awaitable[Answer]]


class ControlServer:
    """Serves one recorder; ``start`` binds, ``stop`` closes. ``url`` is the bound address."""

    def __init__(
        self,
        recorder: Recorder,
        settings: ControlSettings,
        audit: AuditLog,
        metrics: Metrics | None = None,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        """``notify``: told of changes others must hear of (consent), e.g. the webhook."""
        self._recorder = recorder
        self._notify = notify
        self._settings = settings
        self._metrics = metrics
        self._ledger = Ledger(audit, metrics)
        self._auth = Authorizer(settings, recorder.consultation_id)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.url = ""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._every_request])
        control: list[tuple[str, str, tuple[Action, ...], Handler]] = [
            (hdrs.METH_POST, "/v1/tracks", (Action.ADD,), self._add),
            (hdrs.METH_DELETE, "/v1/participants/{participant_id}", (Action.DROP,), self._drop),
            (
                hdrs.METH_POST,
                "/v1/participants/{participant_id}/consent",
                (Action.CONSENT, Action.WITHDRAW_OWN_CONSENT),
                self._consent,
            ),
            (hdrs.METH_POST, "/v1/pause", (Action.PAUSE,), self._pause),
            (hdrs.METH_POST, "/v1/resume", (Action.RESUME,), self._resume),
            (hdrs.METH_POST, "/v1/stop", (Action.STOP,), self._stop),
            (hdrs.METH_GET, "/v1/status", (Action.STATUS,), self._status),
            *E2eeRoutes(recorder.e2ee).routes(),
        ]
        self._actions: dict[str, Action] = {}
        for method, path, actions, handler in control:
            app.router.add_route(method, path, self._guard(actions, handler))
            self._actions[path] = actions[0]
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_route)
        self._app = app

    async def start(self) -> str:
        runner = web.AppRunner(self._app, handle_signals=False)
        await runner.setup()
        server = runner.server
        assert server is not None  # setup() made it
        loop = asyncio.get_running_loop()

        def connection() -> Connection:
            return Connection(server, loop=loop, refused=self._unparsed)

        try:
            listener = await loop.create_server(
                connection, self._settings.host, self._settings.port
            )
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"control API cannot listen on {self._settings.host}:{self._settings.port}: "
                f"{exc.strerror}; set control.port (0 picks a free port)"
            ) from None
        self._runner, self._listener = runner, listener
        host, port = listener.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        log.info("control.listening", url=self.url)
        return self.url

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing ----------------------------------------------------------------------

    @web.middleware
    async def _every_request(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Answer, count and audit every request the parser let through, whatever fails."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        action = self._actions.get(route)
        authorization = request.headers.getall(hdrs.AUTHORIZATION, [])
        try:
            if sum(len(value) for value in authorization) > MAX_AUTHORIZATION:
                exc = AuthError(
                    431,
                    f"the Authorization header is over {MAX_AUTHORIZATION} bytes; "
                    "a bearer token is far shorter",
                )
                log.warning("control.refused", route=route, status=exc.status, reason=exc.reason)
                response: web.StreamResponse = refusal(exc)
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # the router's 404 and 405: no handler ran
            name = exc.reason.lower().replace(" ", "_")
            allow = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None
            response = Answer(
                {"error": name, "reason": exc.reason},
                event="control.failed",
                actor=UNAUTHENTICATED,
                status=exc.status,
                headers=allow,
                reason=exc.reason,
            )
        except Exception as exc:
            response = crashed(exc, UNAUTHENTICATED)
        method = request.method if request.method in _METHODS else "other"
        self._ledger.account(route, method, action, response)
        return response

    def _unparsed(self, answer: Answer) -> None:
        self._ledger.account(UNPARSED, "other", None, answer)

    def _guard(
        self, actions: tuple[Action, ...], handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Authorize and run a control call; every way it ends is an answer with its event."""
        action = actions[0]

        async def route(request: web.Request) -> web.StreamResponse:
            try:
                caller = self._auth.authorize(
                    request.headers.get(hdrs.AUTHORIZATION), action, *actions[1:]
                )
            except AuthError as exc:
                log.warning(
                    "control.refused", action=action.value, status=exc.status, reason=exc.reason
                )
                return refusal(exc)
            try:
                if action is not Action.STATUS:
                    self._require_recording()
                return await handler(request, caller)
            except AuthError as exc:  # a rule only the call's own data can decide
                return refusal(exc, role=caller.role)
            except ControlError as exc:
                return Answer(
                    {"error": exc.error, "reason": exc.reason},
                    event="control.failed",
                    actor=caller.subject,
                    status=exc.status,
                    role=caller.role,
                    reason=exc.reason,
                    **exc.fields,
                )
            except Exception as exc:
                return crashed(exc, caller.subject, role=caller.role)

        return route

    def _require_recording(self) -> None:
        if not self._recorder.started.is_set():
            raise ControlError(409, "not_recording", "the recorder has not started recording yet")
        if self._recorder.stopping:
            raise ControlError(409, "stopping", "the recording is stopping")

    # -- control routes ----------------------------------------------------------------

    async def _add(self, request: web.Request, caller: Caller) -> Answer:
        participant = await read_participant(request)
        try:
            failures = await self._recorder.add_participant(participant)
        except ConfigError as exc:  # no free cell for that role
            raise ControlError(409, "no_free_cell", str(exc)) from None
        except RealtimeError as exc:
            raise ControlError(
                502,
                "realtime_failed",
                str(exc),
                participant_id=participant.id,
                error=type(exc).__name__,
            ) from None
        failed = [
            {"track": f.trackName, "error_code": f.errorCode, "reason": f.errorDescription}
            for f in failures
        ]
        failed_names = {f.trackName for f in failures}
        pulled = [str(t) for t in participant.tracks if t.track_name not in failed_names]
        return Answer(
            {"participant_id": participant.id, "pulled": pulled, "failed": failed},
            event="participant.added",
            actor=caller.subject,
            status=200 if pulled else 502,
            role=caller.role,
            participant_id=participant.id,
            participant_role=participant.role,
            tracks_pulled=pulled,
            tracks_failed=[f["track"] for f in failed],
        )

    async def _drop(self, request: web.Request, caller: Caller) -> Answer:
        participant_id = request.match_info["participant_id"]
        try:
            await self._recorder.drop_participant(participant_id)
        except KeyError:
            raise ControlError(
                404, "unknown_participant", "no such participant is recorded"
            ) from None
        except RealtimeError as exc:
            raise ControlError(502, "realtime_failed", str(exc)) from None
        return Answer(
            {"participant_id": participant_id, "dropped": True},
            event="participant.dropped",
            actor=caller.subject,
            role=caller.role,
            participant_id=participant_id,
        )

    async def _consent(self, request: web.Request, caller: Caller) -> Answer:
        participant_id = request.match_info["participant_id"]
        given = await read_consent(request)
        if caller.action is Action.WITHDRAW_OWN_CONSENT and (
            given or caller.subject != participant_id
        ):
            raise AuthError(
                403,
                f"role {caller.role!r} may only withdraw its own consent (token sub = "
                "participant id)",
                caller.subject,
            )
        if participant_id not in {p.id for p in self._recorder.roster.ever()}:
            raise ControlError(404, "unknown_participant", "no such participant is recorded")
        state = "given" if given else "withdrawn"
        at = round(self._recorder.privacy.set_consent(participant_id, given), 3)
        if self._notify is not None:
            self._notify(
                "consent.changed",
                {"participant_id": participant_id, "consent": state, "at": at},
            )
        return Answer(
            {"participant_id": participant_id, "consent": state, "at": at},
            event=f"consent.{state}",
            actor=caller.subject,
            role=caller.role,
            participant_id=participant_id,
            at=at,
        )

    async def _pause(self, _: web.Request, caller: Caller) -> Answer:
        changed = not self._recorder.status().paused
        if changed:
            self._recorder.privacy.pause()
        return Answer(
            {"paused": True, "changed": changed},
            event="recording.paused",
            actor=caller.subject,
            role=caller.role,
            changed=changed,
        )

    async def _resume(self, _: web.Request, caller: Caller) -> Answer:
        changed = self._recorder.status().paused
        if changed:
            self._recorder.privacy.resume()
        return Answer(
            {"paused": False, "changed": changed},
            event="recording.resumed",
            actor=caller.subject,
            role=caller.role,
            changed=changed,
        )

    async def _stop(self, _: web.Request, caller: Caller) -> Answer:
        self._recorder.stop("stop_requested")
        return Answer(
            {"stopping": True},
            event="recording.stop_requested",
            actor=caller.subject,
            status=202,
            role=caller.role,
        )

    async def _status(self, _: web.Request, caller: Caller) -> Answer:
        ready, state = self._recorder.status().readiness()
        return Answer(
            {**self._recorder.status().as_dict(), "ready": ready, "state": state},
            event="status.read",
            actor=caller.subject,
            role=caller.role,
        )

    # -- open routes -------------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, state = self._recorder.status().readiness()
        return web.json_response({"ready": ready, "state": state}, status=200 if ready else 503)

    async def _metrics_route(self, request: web.Request) -> web.Response:
        if self._settings.metrics_require_auth:
            try:
                self._auth.authorize(request.headers.get(hdrs.AUTHORIZATION), Action.STATUS)
            except AuthError as exc:
                return refusal(exc, action="metrics")
        if self._metrics is None:
            return web.json_response(
                {"error": "not_found", "reason": "metrics are not enabled"}, status=404
            )
        await self._metrics.refresh()
        response = web.Response(body=self._metrics.render())
        response.headers[hdrs.CONTENT_TYPE] = METRICS_CONTENT_TYPE
        return response
