"""Bearer JWTs at the control API: each bad token refused with the right status, and audited.

The server runs around a real, not yet started recorder: authorization is decided before
the recorder is touched, so an accepted token reaches the "not recording yet" answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bot.config import (
    ConfigError,
    ControlSettings,
    RealtimeSettings,
    RecordingSettings,
    Settings,
    load_settings,
)
from bot.control import ROLE_POLICY, Action, AuthError, Authorizer
from bot.control.server import ControlServer
from bot.custody.audit import AuditLog
from bot.observe.metrics import Metrics
from bot.recording import Recorder

SECRET = "auth-test-secret-0123456789abcdefghij"
CONSULTATION = "c-auth"


def claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "orch-1",
        "aud": "consultation-recorder",
        "iat": now,
        "exp": now + 60,
        "consultation_id": CONSULTATION,
        "role": "orchestrator",
    }
    base.update(override)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hs(**override: Any) -> dict[str, str]:
    return bearer(jwt.encode(claims(**override), SECRET, algorithm="HS256"))


class Served:
    def __init__(self, http: httpx.AsyncClient, audit: AuditLog, metrics: Metrics) -> None:
        self.http = http
        self.audit = audit
        self.metrics = metrics

    async def trail(self) -> list[dict[str, Any]]:
        await self.audit.flush()
        return [json.loads(line) for line in self.audit.path.read_text().splitlines()]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    control = ControlSettings(enabled=True, port=0, jwt_secret=SECRET)
    settings = Settings(
        realtime=RealtimeSettings(base_url="http://127.0.0.1:9/v1", app_id="a", app_secret="s"),
        recording=RecordingSettings(consultation_id=CONSULTATION),
        control=control,
    )
    recorder = Recorder(settings)
    audit = AuditLog(tmp_path / "audit.jsonl", CONSULTATION, recorder.recording_id)
    metrics = Metrics(recorder)
    server = ControlServer(recorder, control, audit, metrics)
    url = await server.start()
    assert url.startswith("http://127.0.0.1:")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            yield Served(http, audit, metrics)
    finally:
        await server.stop()
        await audit.close()


REFUSALS = [
    ("missing", lambda: {}, 401, "missing bearer token"),
    ("not bearer", lambda: {"Authorization": "Basic b3JjaDpwdw=="}, 401, "missing bearer token"),
    ("garbage", lambda: bearer("not.a.jwt"), 401, "malformed token"),
    (
        "expired",
        lambda: hs(exp=int(time.time()) - 600, iat=int(time.time()) - 700),
        401,
        "token expired",
    ),
    (
        "wrong signature",
        lambda: bearer(jwt.encode(claims(), "x" * 40, algorithm="HS256")),
        401,
        "bad signature",
    ),
    ("wrong audience", lambda: hs(aud="someone-else"), 401, "wrong audience"),
    ("no exp", lambda: hs(exp=None), 401, "missing claim 'exp'"),
    (
        "not yet valid",
        lambda: hs(nbf=int(time.time()) + 600),
        401,
        "token not yet valid (nbf or iat in the future)",
    ),
    (
        "alg none",
        lambda: bearer(jwt.encode(claims(), None, algorithm="none")),
        401,
        "signing algorithm not allowed",
    ),
    (
        "e-mail subject",
        lambda: hs(sub="jane.doe@example.org"),
        401,
        "sub must be an opaque id (1-128 of [A-Za-z0-9_.:-])",
    ),
    (
        "wrong consultation",
        lambda: hs(consultation_id="c-other"),
        403,
        "token is for another consultation",
    ),
    ("unknown role", lambda: hs(role="admin"), 403, "no known role in claim 'role'"),
    ("patient stops", lambda: hs(role="patient", sub="pat-1"), 403, "role 'patient' may not stop"),
]


@pytest.mark.parametrize(
    ("case", "headers", "status", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
async def test_refused_and_audited(
    served: Served,
    case: str,
    headers: Callable[[], dict[str, str]],
    status: int,
    reason: str,
) -> None:
    # Tokens are minted now, not at collection: a long suite would let them expire.
    sent = headers()
    response = await served.http.post("/v1/stop", headers=sent)
    assert response.status_code == status, case
    body = response.json()
    assert body == {"error": "unauthorized" if status == 401 else "forbidden", "reason": reason}
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    (event,) = await served.trail()
    assert event["event"] == "control.refused"
    assert event["action"] == "stop" and event["status"] == status and event["reason"] == reason
    # 401: the token is not trusted, so neither is its subject; 403: it is.
    token = sent.get("Authorization", "")[7:]
    subject = (
        jwt.decode(token, options={"verify_signature": False})["sub"] if status == 403 else None
    )
    assert event["actor"] == (subject or "unauthenticated")
    assert "Bearer" not in served.audit.path.read_text()
    assert served.metrics.control_requests.labels("stop", str(status))._value.get() == 1


async def test_allowed_call_reaches_the_recorder_and_is_audited(served: Served) -> None:
    response = await served.http.post("/v1/pause", headers=hs(role="clinician", sub="clin-2"))
    assert response.status_code == 409
    assert response.json()["error"] == "not_recording"
    status = await served.http.get("/v1/status", headers=hs(role="patient", sub="pat-1"))
    assert status.status_code == 200
    assert status.json()["consultation_id"] == CONSULTATION
    assert status.json()["ready"] is False and status.json()["state"] == "starting"
    trail = await served.trail()
    assert [(e["event"], e["actor"], e.get("role")) for e in trail] == [
        ("control.failed", "clin-2", "clinician"),
        ("status.read", "pat-1", "patient"),
    ]


async def test_health_ready_and_metrics_need_no_token(served: Served) -> None:
    assert (await served.http.get("/healthz")).json() == {"status": "ok"}
    ready = await served.http.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"ready": False, "state": "starting"}
    metrics = await served.http.get("/metrics")
    assert metrics.status_code == 200
    assert "recorder_recording 0.0" in metrics.text
    assert "recorder_event_loop_lag_seconds_bucket" in metrics.text


async def test_state_is_checked_before_the_body(served: Served) -> None:
    response = await served.http.post("/v1/tracks", headers=hs(), content=b"{")
    assert response.status_code == 409


def test_policy_is_the_documented_one() -> None:
    assert ROLE_POLICY["orchestrator"] == frozenset(Action)
    assert ROLE_POLICY["clinician"] == {
        Action.PAUSE,
        Action.RESUME,
        Action.STOP,
        Action.STATUS,
        Action.CONSENT,
    }
    assert ROLE_POLICY["patient"] == {Action.PAUSE, Action.STATUS, Action.WITHDRAW_OWN_CONSENT}


def test_es256_public_key(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    settings = ControlSettings(
        enabled=True, jwt_algorithm="ES256", jwt_public_key_path=tmp_path / "pub.pem"
    )
    auth = Authorizer(settings, CONSULTATION)
    good = jwt.encode(claims(role="clinician"), private, algorithm="ES256")
    assert auth.authorize(f"Bearer {good}", Action.RESUME).subject == "orch-1"
    other = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    with pytest.raises(AuthError, match="bad signature"):
        auth.authorize(f"Bearer {other}", Action.STATUS)
    # An HS256 token signed with the public key as secret (key confusion) is refused.
    confused = jwt.encode(claims(), "x" * 40, algorithm="HS256")
    with pytest.raises(AuthError, match="signing algorithm not allowed"):
        auth.authorize(f"Bearer {confused}", Action.STATUS)


def test_bad_key_config_fails_early(tmp_path: Path) -> None:
    (tmp_path / "priv.pem").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = ControlSettings(
        enabled=True, jwt_algorithm="ES256", jwt_public_key_path=tmp_path / "priv.pem"
    )
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Authorizer(settings, CONSULTATION)
    with pytest.raises(ConfigError, match="jwt_secret must hold at least 32"):
        load_settings(env={"BOT_CONTROL_ENABLED": "1", "BOT_CONTROL_JWT_SECRET": "short"})
