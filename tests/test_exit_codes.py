"""``bot record`` exit codes, one real run per failure class (see the README table)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from testbed.stack import LocalCall, free_port, start_local_sfu

from bot.exitcodes import ExitCode


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def call() -> AsyncIterator[LocalCall]:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        yield call
    finally:
        await call.close()


def _env(call: LocalCall, tmp_path: Path, **extra: str) -> dict[str, str]:
    return call.recorder_env(
        tmp_path,
        **{"BOT_RECORDING_FPS": "10", "BOT_RECORDING_VIDEO_PRESET": "ultrafast", **extra},
    )


async def _record(call: LocalCall, env: dict[str, str], tracks: str | None = None) -> int:
    refs = tracks or ",".join(str(t) for t in call.participants[0].tracks)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "record",
        "--consultation-id",
        "c-exit",
        "--participant",
        f"c1:clinician={refs}",
        "--max-duration",
        "2",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=120)


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_config_is_2(call: LocalCall, tmp_path: Path) -> None:
    assert await _record(call, _env(call, tmp_path, BOT_RECORDING_FPS="fast")) == ExitCode.CONFIG
    # The control API switched on without a key to verify tokens with.
    env = _env(call, tmp_path, BOT_CONTROL_ENABLED="true")
    assert await _record(call, env) == ExitCode.CONFIG


@pytest.mark.asyncio(loop_scope="module")
async def test_wrong_cloudflare_secret_is_3(call: LocalCall, tmp_path: Path) -> None:
    env = _env(call, tmp_path, BOT_REALTIME_APP_SECRET="not-the-secret")
    assert await _record(call, env) == ExitCode.REALTIME_AUTH


@pytest.mark.asyncio(loop_scope="module")
async def test_unknown_tracks_are_4(call: LocalCall, tmp_path: Path) -> None:
    code = await _record(call, _env(call, tmp_path), tracks="nosuchsession/audio")
    assert code == ExitCode.REALTIME


@pytest.mark.asyncio(loop_scope="module")
async def test_storage_failure_is_5_and_keeps_the_spool(call: LocalCall, tmp_path: Path) -> None:
    env = _env(
        call,
        tmp_path,
        BOT_STORAGE_BACKEND="s3",
        BOT_STORAGE_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        BOT_STORAGE_BUCKET="recordings",
        BOT_STORAGE_ACCESS_KEY_ID="test",
        BOT_STORAGE_SECRET_ACCESS_KEY="test-secret",
        BOT_STORAGE_FINISH_TIMEOUT="1",
        BOT_STORAGE_CONNECT_TIMEOUT="0.5",
        BOT_STORAGE_MAX_ATTEMPTS="1",
    )
    assert await _record(call, env) == ExitCode.STORAGE
    assert list(tmp_path.glob("spool/*/recording.mp4"))
