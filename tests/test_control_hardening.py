"""The control API probed from outside: whatever a caller sends, the answer is JSON, the
request is audited and counted once, nothing echoes a token, and the trail stays bounded.

Also the token rules around authorization (a lifetime cap, single-use tokens) and the
mode of what the local store writes. The server is ``test_control_auth``'s (same secret,
consultation and token helpers), here with the settings each case needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from bot.config import (
    ConfigError,
    ControlSettings,
    RealtimeSettings,
    RecordingSettings,
    Settings,
    StorageSettings,
    load_settings,
)
from bot.control import Action, Caller
from bot.control.server import ControlServer
from bot.custody.audit import AuditLog
from bot.observe.metrics import Metrics
from bot.recording import Recorder
from bot.storage import open_store
from bot.storage.multipart import PartBody
from tests.test_control_auth import CONSULTATION, SECRET, Served, hs

TEN_YEARS = 10 * 365 * 24 * 3600
AUDIT_LINE_BOUND = 2048


class Running(Served):
    """A served control API and the recorder behind it."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        audit: AuditLog,
        metrics: Metrics,
        recorder: Recorder,
        url: str,
    ) -> None:
        super().__init__(http, audit, metrics)
        self.recorder = recorder
        self.url = url

    def requests(self, route: str, status: int) -> float:
        counter = self.metrics.control_http_requests.labels(route, str(status))
        value: float = counter._value.get()
        return value


Serve = Callable[..., Awaitable[Running]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start the control API with ``ControlSettings`` overrides; ``started``: as if the
    recorder were recording (only the control state matters to these cases)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*, started: bool = False, **control: Any) -> Running:
            settings = ControlSettings(enabled=True, port=0, jwt_secret=SECRET, **control)
            recorder = Recorder(
                Settings(
                    realtime=RealtimeSettings(
                        base_url="http://127.0.0.1:9/v1", app_id="a", app_secret="s"
                    ),
                    recording=RecordingSettings(consultation_id=CONSULTATION),
                    control=settings,
                )
            )
            if started:
                recorder.started.set()
            audit = AuditLog(tmp_path / "audit.jsonl", CONSULTATION, recorder.recording_id)
            stack.push_async_callback(audit.close)
            metrics = Metrics(recorder)
            server = ControlServer(recorder, settings, audit, metrics)
            url = await server.start()
            stack.push_async_callback(server.stop)
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            return Running(http, audit, metrics, recorder, url)

        yield start


async def raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (an HTTP client would refuse or rewrite these requests) and
    read the answer until the server closes."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(answer.split(b" ", 2)[1]), answer


def body_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


# --- every request answered in JSON, audited and counted ----------------------------


@pytest.mark.parametrize(
    ("size", "route"),
    [(6_000, "/v1/status"), (10_000, "unparsed"), (100_000, "unparsed")],
    ids=["over-4096", "over-aiohttp-limit", "100k"],
)
async def test_oversized_authorization_is_refused_audited_and_never_echoed(
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    size: int,
    route: str,
) -> None:
    served = await serve()
    caplog.set_level(logging.DEBUG)
    marker = f"tok{uuid.uuid4().hex}"
    header = f"Bearer eyJ{marker}".ljust(size, "A")
    request = (
        f"GET /v1/status HTTP/1.1\r\nHost: recorder\r\nAuthorization: {header}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with structlog.testing.capture_logs() as events:
        status, answer = await raw(served.url, request)
    assert status == 431
    assert body_of(answer)["error"] == "header_too_large"
    for shown in (answer, caplog.text.encode(), repr(events).encode()):
        assert marker.encode() not in shown and b"eyJ" not in shown and b"Bearer" not in shown
    out, err = capfd.readouterr()
    assert marker not in out + err
    (event,) = await served.trail()
    assert event["event"] == "control.refused" and event["actor"] == "unauthenticated"
    assert event["status"] == 431 and event["route"] == route and event["outcome"] == "refused"
    assert marker not in served.audit.path.read_text()
    assert served.requests(route, 431) == 1
    assert (await served.http.get("/healthz")).json() == {"status": "ok"}


async def test_deep_json_is_a_bad_request_and_the_server_stays_up(serve: Serve) -> None:
    served = await serve(started=True)
    deep = b"[" * 30_000 + b"]" * 30_000
    response = await served.http.post(
        "/v1/tracks", content=deep, headers={**hs(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_request",
        "reason": "body must be JSON nested at most 8 deep",
    }
    (event,) = await served.trail()
    assert event["event"] == "control.failed" and event["actor"] == "orch-1"
    assert event["action"] == "add" and event["status"] == 400
    assert served.metrics.control_requests.labels("add", "400")._value.get() == 1
    assert (await served.http.get("/healthz")).status_code == 200


async def test_brackets_inside_strings_are_not_nesting(serve: Serve) -> None:
    served = await serve(started=True)
    text = '"\\"' + "[" * 20 + '"'  # an escaped quote does not end the string
    body = f'{{"participant_id": "p1", "role": "patient", "tracks": [{text}]}}'
    response = await served.http.post("/v1/tracks", content=body.encode(), headers=hs())
    assert response.status_code == 400
    assert response.json()["reason"].startswith("tracks[0] (sha256:")


async def test_a_fault_in_a_handler_is_a_json_500_and_audited(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = await serve(started=True)

    def pause() -> None:
        raise RuntimeError("jane doe's camera")

    monkeypatch.setattr(served.recorder.privacy, "pause", pause)
    response = await served.http.post("/v1/pause", headers=hs(role="clinician", sub="clin-2"))
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "jane" not in response.text and "Traceback" not in response.text
    (event,) = await served.trail()
    assert event["event"] == "control.error" and event["actor"] == "clin-2"
    assert event["error"] == "RuntimeError" and event["status"] == 500
    assert "jane" not in served.audit.path.read_text()


async def test_unknown_routes_and_methods_are_json_and_audited(serve: Serve) -> None:
    served = await serve()
    missing = await served.http.get("/v1/jane-doe-notes")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = await served.http.post("/healthz")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert wrong.headers["Allow"] == "GET,HEAD"
    trail = await served.trail()
    assert [(e["event"], e["route"], e["status"]) for e in trail] == [
        ("control.failed", "unmatched", 404),
        ("control.failed", "unmatched", 405),
    ]
    assert "jane" not in served.audit.path.read_text()
    assert served.requests("unmatched", 404) == 1


async def test_probes_are_counted_not_audited(serve: Serve) -> None:
    served = await serve()
    assert (await served.http.get("/healthz")).status_code == 200
    assert (await served.http.get("/readyz")).status_code == 503
    assert await served.trail() == []
    assert served.requests("/healthz", 200) == 1 and served.requests("/readyz", 503) == 1


# --- caller input in the audit trail ------------------------------------------------

NAME = "Jane-Doe-" * 6_000  # ~54 KB of what might be a name

BAD_INPUT = [
    ("long track", {"participant_id": "p1", "role": "patient", "tracks": [NAME]}),
    ("long field name", {"participant_id": "p1", "role": "patient", "tracks": ["s/t"], NAME: 1}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_INPUT], ids=[n for n, _ in BAD_INPUT])
async def test_bad_input_reaches_the_trail_bounded_and_unquoted(
    serve: Serve, body: dict[str, Any]
) -> None:
    served = await serve(started=True)
    response = await served.http.post("/v1/tracks", json=body, headers=hs())
    assert response.status_code == 400
    assert "Jane-Doe" not in response.text
    (event,) = await served.trail()
    assert event["event"] == "control.failed" and event["status"] == 400
    text = served.audit.path.read_text()
    assert len(text) < AUDIT_LINE_BOUND, len(text)
    assert "Jane-Doe" not in text


# --- token lifetime and replays -----------------------------------------------------


async def test_a_long_lived_token_is_refused_and_audited(serve: Serve) -> None:
    served = await serve()
    now = int(time.time())
    response = await served.http.post("/v1/stop", headers=hs(iat=now, exp=now + TEN_YEARS))
    assert response.status_code == 401
    reason = "token lifetime 315360000 s exceeds control.jwt_max_lifetime 3600 s"
    assert response.json() == {"error": "unauthorized", "reason": reason}
    no_iat = await served.http.post("/v1/stop", headers=hs(iat=None))
    assert no_iat.status_code == 401
    assert no_iat.json()["reason"] == (
        "missing claim 'iat' (needed to check control.jwt_max_lifetime)"
    )
    trail = await served.trail()
    assert [(e["event"], e["reason"]) for e in trail] == [
        ("control.refused", reason),
        ("control.refused", no_iat.json()["reason"]),
    ]


async def test_the_lifetime_cap_can_be_lifted(serve: Serve) -> None:
    served = await serve(jwt_max_lifetime=0)
    now = int(time.time())
    for headers in (hs(iat=now, exp=now + TEN_YEARS), hs(iat=None)):
        response = await served.http.post("/v1/stop", headers=headers)
        assert response.status_code == 409  # allowed; the recorder is not recording yet


async def test_a_token_changes_the_recording_once(serve: Serve) -> None:
    served = await serve(jwt_replay_cache=True)
    once = hs(role="clinician", sub="clin-2", jti=uuid.uuid4().hex)
    first = await served.http.post("/v1/pause", headers=once)
    assert first.status_code == 409  # allowed (and spent); the recorder is not recording
    again = await served.http.post("/v1/pause", headers=once)
    assert again.status_code == 401
    assert again.json()["reason"] == "token already used (jti seen before); mint a new one"
    for _ in range(2):  # reads do not spend the token
        assert (await served.http.get("/v1/status", headers=once)).status_code == 200
    no_jti = await served.http.post("/v1/stop", headers=hs())
    assert no_jti.status_code == 401
    assert no_jti.json()["reason"].startswith("missing claim 'jti'")
    trail = await served.trail()
    assert [(e["event"], e["actor"], e["status"]) for e in trail] == [
        ("control.failed", "clin-2", 409),
        ("control.refused", "clin-2", 401),
        ("status.read", "clin-2", 200),
        ("status.read", "clin-2", 200),
        ("control.refused", "unauthenticated", 401),
    ]


def test_the_replay_cache_forgets_expired_tokens() -> None:
    from bot.control.auth import ReplayCache

    now = [1000.0]
    cache = ReplayCache(leeway=5, clock=lambda: now[0])
    for index in range(100):
        cache.spend(Caller("orch-1", "orchestrator", f"j{index}", 1060.0), Action.STOP)
    assert len(cache) == 100
    now[0] = 1065.5  # past exp + leeway: the tokens are refused for their age anyway
    cache.spend(Caller("orch-1", "orchestrator", "next", 1120.0), Action.STOP)
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BOT_CONTROL_JWT_REPLAY_CACHE": "1", "BOT_CONTROL_JWT_MAX_LIFETIME": "0"},
            "jwt_replay_cache needs control.jwt_max_lifetime > 0",
        ),
        ({"BOT_CONTROL_JWT_MAX_LIFETIME": "-1"}, "jwt_max_lifetime.*greater than or equal to 0"),
        (
            {"BOT_CONTROL_JWT_MAX_LIFETIME": "864000"},
            "jwt_max_lifetime.*less than or equal to 86400",
        ),
    ],
)
def test_token_rules_are_validated(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_default_tokens_live_an_hour_at_most() -> None:
    control = load_settings(env={}).control
    assert control.jwt_max_lifetime == 3600 and control.jwt_replay_cache is False


# --- what the local store writes ----------------------------------------------------


def test_local_store_writes_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = open_store(StorageSettings(local_dir=tmp_path))
        store.preflight()
        key = "consultations/2026-01-01/c-1/r-1.mp4"
        upload = store.create_upload(key, "r-1")
        data = b"\0" * 1024
        spooled = tmp_path / "spooled"
        spooled.write_bytes(data)
        with PartBody(spooled, 0, len(data)) as body:
            store.upload_part(key, upload, 1, body, hashlib.md5(data).digest())
        store.complete(key, upload, store.list_parts(key, upload))
        store.put_small(key + ".manifest.json", b"{}", "application/json")
    finally:
        os.umask(old)
    for name in (key, key + ".manifest.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
