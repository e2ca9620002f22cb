"""A whole local call: the SFU and synthetic participants, each in its own process.

Separate processes keep the publishers' and the SFU's packet handling off the recorder's
event loop and let them use the second core, as they would on real machines.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bot.config import Participant, TrackRef

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class LocalCall:
    """The SFU's address and credentials, and the published participants."""

    base_url: str
    app_id: str
    app_secret: str
    participants: list[Participant] = field(default_factory=list)
    _processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def publish(
        self,
        role: str,
        number: int,
        *,
        participant_id: str | None = None,
        duration: float | None = None,
        codec: str = "VP8",
    ) -> Participant:
        """Start a synthetic participant process; returns it once its tracks are live."""
        args = [
            "-m",
            "bot",
            "publish",
            "--base-url",
            self.base_url,
            "--app-id",
            self.app_id,
            "--app-secret",
            self.app_secret,
            "--role",
            role,
            "--number",
            str(number),
            "--codec",
            codec,
        ]
        if duration is not None:
            args += ["--duration", str(duration)]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        self._processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=START_TIMEOUT)
        if not line:
            raise RuntimeError(
                f"synthetic {role} exited before publishing (code {process.returncode})"
            )
        refs = json.loads(line)["tracks"]
        participant = Participant(
            id=participant_id or f"p{number}",
            role=role,
            tracks=tuple(TrackRef.parse(refs[kind]) for kind in ("audio", "video")),
        )
        self.participants.append(participant)
        return participant

    def recorder_env(self, workdir: Path, **extra: str) -> dict[str, str]:
        """The environment of a ``bot record`` process against this call.

        Storage is the local backend under ``workdir`` (``spool/``, ``out/``); logs are
        JSON; ``extra`` (``BOT_*`` variables) wins. Inherited ``BOT_*`` variables are
        dropped so the caller's shell cannot leak into a test.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        env.update(
            BOT_REALTIME_BASE_URL=self.base_url,
            BOT_REALTIME_APP_ID=self.app_id,
            BOT_REALTIME_APP_SECRET=self.app_secret,
            BOT_REALTIME_ICE_SERVERS="",
            BOT_LOGGING_FORMAT="json",
            BOT_STORAGE_BACKEND="local",
            BOT_STORAGE_SPOOL_DIR=str(workdir / "spool"),
            BOT_STORAGE_LOCAL_DIR=str(workdir / "out"),
        )
        env.update(extra)
        return env

    async def inject_fault(self, body: dict[str, object]) -> None:
        """``POST /admin/faults`` on this call's SFU (see ``testbed.sfu.admin``)."""
        admin = self.base_url.removesuffix("/v1") + "/admin/faults"
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.post(
                admin, json=body, headers={"Authorization": f"Bearer {self.app_secret}"}
            )
        response.raise_for_status()

    async def close(self) -> None:
        for process in reversed(self._processes):
            await _stop(process)


def participant_flag(participant: Participant) -> str:
    """``--participant ID:ROLE=SESSION/TRACK,...`` for ``bot record``."""
    tracks = ",".join(str(t) for t in participant.tracks)
    return f"{participant.id}:{participant.role}={tracks}"


async def start_local_sfu(
    *, sender_reports: bool = True, ssrc_in_sdp: bool = True, host: str = "127.0.0.1"
) -> LocalCall:
    """Start ``bot sfu`` on a free port of ``host`` and wait until it answers HTTP."""
    port = free_port()
    app_id, app_secret = "local-app", secrets.token_hex(16)
    args = [
        "-m",
        "bot",
        "sfu",
        "--host",
        host,
        "--port",
        str(port),
        "--app-id",
        app_id,
        "--app-secret",
        app_secret,
    ]
    if not sender_reports:
        args.append("--no-sender-reports")
    if not ssrc_in_sdp:
        args.append("--no-ssrc-lines")
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stderr=asyncio.subprocess.DEVNULL, env=os.environ.copy()
    )
    call = LocalCall(f"http://{host}:{port}/v1", app_id, app_secret, _processes=[process])
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            deadline = asyncio.get_running_loop().time() + START_TIMEOUT
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"local SFU exited with code {process.returncode}")
                try:
                    await http.get(f"{call.base_url}/apps/{app_id}/sessions/probe")
                    break
                except httpx.TransportError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise RuntimeError("local SFU did not start in time") from None
                    await asyncio.sleep(0.1)
    except BaseException:
        await call.close()
        raise
    return call
