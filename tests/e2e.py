"""Shared helpers for end-to-end tests: a local call, the recorder's settings, file checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from testbed.stack import LocalCall

from bot.config import (
    CustodySettings,
    Participant,
    RealtimeSettings,
    RecordingSettings,
    Settings,
    StorageSettings,
)
from bot.media.layout import Rect, grid

CLINIC_KEY = ed25519.Ed25519PrivateKey.generate()
"""The test clinic's signing key: every recording the suite makes is signed with it."""
CLINIC_KEY_PEM = CLINIC_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
CLINIC_CUSTODY = CustodySettings(signing_key=CLINIC_KEY_PEM)


def clinic_public_key(directory: Path) -> Path:
    """The clinic's public key as a PEM file, what a verifier is given."""
    path = directory / "clinic-public.pem"
    path.write_bytes(
        CLINIC_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def bot_verify(
    *args: str | Path, public_key_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``bot verify`` in its own process, as a third party runs it, with the clinic's key."""
    key = clinic_public_key(public_key_dir)
    return subprocess.run(
        [sys.executable, "-m", "bot", "verify", *map(str, args), "--public-key", str(key)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def recorder_settings(
    call: LocalCall,
    output_dir: Path,
    participants: tuple[Participant, ...] | None = None,
    storage: StorageSettings | None = None,
    **recording: Any,
) -> Settings:
    """The recorder pointed at a local call; verified files land in ``output_dir``."""
    return Settings(
        realtime=RealtimeSettings(
            base_url=call.base_url, app_id=call.app_id, app_secret=call.app_secret, ice_servers=()
        ),
        recording=RecordingSettings(
            consultation_id=recording.pop("consultation_id", "c-e2e"),
            participants=participants if participants is not None else tuple(call.participants),
            **recording,
        ),
        storage=storage
        or StorageSettings(spool_dir=output_dir / "spool", local_dir=output_dir / "verified"),
        custody=CLINIC_CUSTODY,
    )


def slots(count: int, width: int = 1280, height: int = 720) -> list[Rect]:
    return grid(count, width, height)


def ffprobe(path: Path) -> dict[str, Any]:
    """Debian's ffprobe, not the FFmpeg inside PyAV: an independent reading of the file."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


@dataclass
class WebhookReceiver:
    """A webhook endpoint on loopback that records what it is sent."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    """Answers to give, in order; 200 once exhausted."""
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    """Every attempt, answered 200 or not."""
    delivered: list[bytes] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[dict[str, Any]]:
        """The bodies delivered (answered 200), in order."""
        return [json.loads(body) for body in self.delivered]


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    state = WebhookReceiver()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        state.seen.append((dict(request.headers), body))
        status = state.statuses.pop(0) if state.statuses else 200
        if status == 200:
            state.delivered.append(body)
            state.got.set()
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()
