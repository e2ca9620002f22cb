"""Every answer the control server gives, and the audit event each one makes.

An ``Answer`` is a JSON response that carries its audit event, written by the server's
middleware once the request is answered: a request is one line in the trail whatever
happened on the way, and no handler can forget it. Refusals, faults and what aiohttp's
HTTP parser refuses are answered here without quoting the request: aiohttp would answer
in plain text quoting up to a hundred bytes of it (a token's first bytes included) and log
the same with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import LooseHeaders

from bot.control.auth import UNAUTHENTICATED, Action, AuthError
from bot.control.bounds import bounded
from bot.custody.audit import AuditLog
from bot.observe.metrics import Metrics

log = structlog.get_logger("bot.control")

UNPARSED: Final = "unparsed"
"""The route of a request the HTTP parser refused."""
_REFUSED: Final = frozenset({401, 403, 431})


class _NoRequestText(logging.Filter):
    """aiohttp's records keep their message and the exception's type; their arguments and
    the exception's text may quote the request, a token's first bytes included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[0] is not None:
            record.msg = f"{record.msg} ({record.exc_info[0].__name__})"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


_http_log = logging.getLogger("bot.control.http")
"""What aiohttp itself says about the control server's connections (instead of
``aiohttp.server``; there is no access log: the audit trail is that)."""
_http_log.addFilter(_NoRequestText())


class ControlError(Exception):
    """A refused control call that is not about authorization (bad input, wrong state).

    ``fields`` go to the audit event next to the reason.
    """

    def __init__(self, status: int, error: str, reason: str, /, **fields: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.fields = fields


class Answer(web.Response):
    """A JSON answer and the audit event it makes. The middleware writes the event once the
    request is answered, so a request is one line in the trail whatever happened on the
    way, and no handler can forget it."""

    def __init__(
        self,
        body: Mapping[str, Any],
        *,
        event: str,
        actor: str,
        status: int = 200,
        headers: LooseHeaders | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(
            text=json.dumps(body), status=status, content_type="application/json", headers=headers
        )
        self.event = event
        self.actor = actor
        self.fields = fields


def refusal(exc: AuthError, **fields: Any) -> Answer:
    headers = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="recorder"'} if exc.status == 401 else None
    return Answer(
        {"error": exc.error, "reason": exc.reason},
        event="control.refused",
        actor=exc.subject,
        status=exc.status,
        headers=headers,
        reason=exc.reason,
        **fields,
    )


def crashed(exc: Exception, actor: str, **fields: Any) -> Answer:
    """A fault here: the caller learns nothing of it; the log and the trail get the
    exception's type and where it was raised, never its text (which may quote input)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    log.error("control.internal_error", error=type(exc).__name__, where=where)
    return Answer(
        {"error": "internal_error", "reason": "the recorder could not handle this request"},
        event="control.error",
        actor=actor,
        status=500,
        error=type(exc).__name__,
        where=where,
        **fields,
    )


def outcome(status: int) -> str:
    if status < 400:
        return "done"
    return "refused" if status in _REFUSED else "failed"


class Connection(web.RequestHandler):
    """aiohttp's connection handler, except for what it answers without the application:
    requests its parser refuses, and a fault past the middleware. aiohttp would answer in
    plain text quoting up to a hundred bytes of the request and log the same with a
    traceback; this answers in JSON, quotes nothing, and hands the answer to ``refused``
    to be audited and counted."""

    __slots__ = ("_refused",)

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        refused: Callable[[Answer], None],
    ) -> None:
        # None turns the access log off (aiohttp's own check), though typed as a Logger.
        super().__init__(manager, loop=loop, access_log=None, logger=_http_log)  # type: ignore[arg-type]
        self._refused = refused

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer is already on its way; the connection is closed")
        error = type(exc).__name__ if exc is not None else None
        if isinstance(exc, LineTooLong):
            answer = Answer(
                {
                    "error": "header_too_large",
                    "reason": f"the request line or a header is over {self.max_field_size} bytes",
                },
                event="control.refused",
                actor=UNAUTHENTICATED,
                status=431,
                error=error,
            )
        elif status == 400:
            answer = Answer(
                {"error": "bad_request", "reason": "not a well-formed HTTP request"},
                event="control.failed",
                actor=UNAUTHENTICATED,
                status=400,
                error=error,
            )
        else:
            answer = Answer(
                {"error": "internal_error", "reason": "the recorder could not handle this request"},
                event="control.error",
                actor=UNAUTHENTICATED,
                status=status,
                error=error,
            )
        log.warning(answer.event, route=UNPARSED, status=answer.status, error=error)
        self._refused(answer)
        answer.force_close()
        return answer


class Ledger:
    """Every answered request, counted by route and status and written to the audit trail
    as its one line (route, method, status, outcome and the answer's own fields, bounded)."""

    def __init__(self, audit: AuditLog, metrics: Metrics | None) -> None:
        self._audit = audit
        self._metrics = metrics

    def account(
        self, route: str, method: str, action: Action | None, response: web.StreamResponse
    ) -> None:
        status = response.status
        if self._metrics is not None:
            self._metrics.control_http_requests.labels(route, str(status)).inc()
            if action is not None:
                self._metrics.control_requests.labels(action.value, str(status)).inc()
        if isinstance(response, Answer):
            fields = dict(response.fields)
            if action is not None:
                fields["action"] = action.value
            fields.update(route=route, method=method, status=status, outcome=outcome(status))
            self._audit.record(response.event, actor=response.actor, **bounded(fields))
