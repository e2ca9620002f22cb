"""The control API's E2EE routes: how an orchestrator brings the recorder into an encrypted
call (role ``orchestrator``; bytes as base64).

- ``POST /v1/e2ee/key-package {"identity"}``: the recorder's KeyPackage, for the call's
  committer to admit (``identity`` is the id the room knows the recorder by);
- ``POST /v1/e2ee/welcome {"welcome", "ratchet_tree"}``: join (``joined`` false when the
  Welcome is someone else's);
- ``POST /v1/e2ee/messages {"message"}``: a Commit or Proposal from the room;
- ``POST /v1/e2ee/members {"key_package"}`` and ``DELETE /v1/e2ee/members/{identity}``: a
  newcomer or a departure; the recorder commits when it is the committer;
- ``GET /v1/e2ee/outbox``: what the recorder must send to the room (KeyPackage, Commits,
  Welcomes with their ratchet tree), taken once;
- ``POST /v1/e2ee/orange``: one of Orange Meets' room messages as it is
  (``e2eeMlsMessage``, ``userLeftNotification``); answered with the room messages to send.

Every answer carries the session's state (joined, epoch, safety number, members); the
audit line has the same, never key material.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from bot.control.answers import Answer, ControlError
from bot.control.auth import Action, Caller
from bot.control.bodies import base64_field, read_object
from bot.e2ee.group import GroupError
from bot.e2ee.orange import RoomMessageError, relay
from bot.e2ee.session import E2eeSession

Route = tuple[str, str, tuple[Action, ...], Callable[[web.Request, Caller], Awaitable[Answer]]]


class E2eeRoutes:
    """The routes over one recorder's ``E2eeSession``."""

    def __init__(self, session: E2eeSession) -> None:
        self._session = session

    def routes(self) -> list[Route]:
        e2ee = (Action.E2EE,)
        return [
            (hdrs.METH_POST, "/v1/e2ee/key-package", e2ee, self._key_package),
            (hdrs.METH_POST, "/v1/e2ee/welcome", e2ee, self._welcome),
            (hdrs.METH_POST, "/v1/e2ee/messages", e2ee, self._message),
            (hdrs.METH_POST, "/v1/e2ee/members", e2ee, self._member_joined),
            (hdrs.METH_DELETE, "/v1/e2ee/members/{identity}", e2ee, self._member_left),
            (hdrs.METH_GET, "/v1/e2ee/outbox", e2ee, self._outbox),
            (hdrs.METH_POST, "/v1/e2ee/orange", e2ee, self._orange),
        ]

    async def _key_package(self, request: web.Request, caller: Caller) -> Answer:
        identity = (await read_object(request)).get("identity")
        if not isinstance(identity, str) or not 0 < len(identity) <= 256:
            raise ControlError(400, "bad_request", "identity must be a string of 1-256 chars")
        package = self._apply(lambda: self._session.key_package(identity.encode()))
        encoded = base64.b64encode(package).decode()
        return self._answer("e2ee.key_package", caller, key_package=encoded)

    async def _welcome(self, request: web.Request, caller: Caller) -> Answer:
        body = await read_object(request)
        welcome = base64_field(body, "welcome")
        tree = base64_field(body, "ratchet_tree", required=False)
        assert welcome is not None
        joined = self._apply(lambda: self._session.welcome(welcome, tree))
        return self._answer("e2ee.welcome", caller, accepted=joined)

    async def _message(self, request: web.Request, caller: Caller) -> Answer:
        message = base64_field(await read_object(request), "message")
        assert message is not None
        changed = self._apply(lambda: self._session.message(message))
        return self._answer("e2ee.message", caller, new_epoch=changed)

    async def _member_joined(self, request: web.Request, caller: Caller) -> Answer:
        package = base64_field(await read_object(request), "key_package")
        assert package is not None
        committed = self._apply(lambda: self._session.member_joined(package))
        return self._answer("e2ee.member_joined", caller, committed=committed is not None)

    async def _member_left(self, request: web.Request, caller: Caller) -> Answer:
        identity = request.match_info["identity"].encode()
        committed = self._apply(lambda: self._session.member_left(identity))
        return self._answer("e2ee.member_left", caller, committed=committed is not None)

    async def _outbox(self, _: web.Request, caller: Caller) -> Answer:
        messages = [outgoing.as_dict() for outgoing in self._session.drain()]
        return self._answer("e2ee.outbox", caller, messages=messages)

    async def _orange(self, request: web.Request, caller: Caller) -> Answer:
        message = await read_object(request)
        send = self._apply(lambda: relay(self._session, message))
        return self._answer("e2ee.orange", caller, send=send)

    def _apply(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except (GroupError, RoomMessageError) as exc:
            raise ControlError(422, "e2ee_refused", str(exc)) from None

    def _answer(self, event: str, caller: Caller, **body: Any) -> Answer:
        """The body and the session's state; the audit line gets the state only (what
        was relayed is MLS ciphertext and KeyPackages: public, but not for the trail)."""
        state = dataclasses.asdict(self._session.status())
        return Answer(
            {**body, **state}, event=event, actor=caller.subject, role=caller.role, **state
        )
