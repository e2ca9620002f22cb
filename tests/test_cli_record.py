"""``bot record`` as an orchestrator runs it: flags, environment, signals, exit codes."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from testbed.stack import LocalCall, participant_flag, start_local_sfu

from bot.exitcodes import ExitCode
from tests.e2e import ffprobe


@pytest.fixture
async def call() -> AsyncIterator[LocalCall]:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        yield call
    finally:
        await call.close()


def _env(call: LocalCall, tmp_path: Path, **extra: str) -> dict[str, str]:
    return call.recorder_env(tmp_path, **extra)


def _participant_flag(call: LocalCall) -> str:
    return participant_flag(call.participants[0])


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        "--consultation-id",
        "c-123",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _human_lines(stderr: str) -> list[str]:
    """The lines meant for a person: everything but the JSON log events."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


async def test_sigterm_mid_recording_leaves_a_playable_file(
    call: LocalCall, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "record",
        "--participant",
        _participant_flag(call),
        "--max-duration",
        "60",
        "--output-dir",
        str(tmp_path),
        "--consultation-id",
        "c-123",
        env=_env(call, tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None

    # Wait for the recorder to report its first pulled track, then for media to flow.
    async def wait_for(event: str) -> None:
        assert process.stderr is not None
        while event.encode() not in await process.stderr.readline():
            assert process.returncode is None

    await asyncio.wait_for(wait_for("subscriber.track_pulled"), timeout=30)
    await asyncio.wait_for(wait_for('"state": "connected"'), timeout=30)
    files = []
    for _ in range(200):  # up to 20 s for two fragments to reach the disk
        files = list(tmp_path.glob("spool/*/recording.mp4"))
        if files and files[0].stat().st_size > 100_000:
            break
        await asyncio.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == ExitCode.OK
    assert "stop=sigterm" in out.decode()
    [path] = tmp_path.glob("consultations/*/c-123/*.mp4")  # verified, spool removed
    assert not list(tmp_path.glob("spool/*/recording.mp4"))
    info = ffprobe(path)
    assert float(info["format"]["duration"]) > 1.0
    assert {s["codec_name"] for s in info["streams"]} == {"h264", "aac"}


async def test_missing_secret_is_one_clear_line(call: LocalCall, tmp_path: Path) -> None:
    env = _env(call, tmp_path)
    del env["BOT_REALTIME_APP_SECRET"]
    code, _, err = await _run(
        ["record", "--participant", _participant_flag(call), "--output-dir", str(tmp_path)], env
    )
    assert code == ExitCode.CONFIG
    [line] = _human_lines(err)
    assert "BOT_REALTIME_APP_SECRET" in line


async def test_malformed_track_reference_is_one_clear_line(call: LocalCall, tmp_path: Path) -> None:
    code, _, err = await _run(
        ["record", "--participant", "c1:clinician=not-a-reference", "--output-dir", str(tmp_path)],
        _env(call, tmp_path),
    )
    assert code == ExitCode.CONFIG
    [line] = _human_lines(err)
    assert "not-a-reference" in line and "SESSION_ID/TRACK_NAME" in line


async def test_unknown_track_is_one_clear_line(call: LocalCall, tmp_path: Path) -> None:
    session = call.participants[0].tracks[0].session_id
    code, _, err = await _run(
        [
            "record",
            "--participant",
            f"c1:clinician={session}/nosuchtrack",
            "--output-dir",
            str(tmp_path),
        ],
        _env(call, tmp_path),
    )
    assert code == ExitCode.REALTIME
    [line] = _human_lines(err)
    assert "nosuchtrack" in line and "not_found_track_error" in line
    assert not list(tmp_path.rglob("*.mp4")), "no empty file is left behind"


async def test_wrong_secret_is_one_clear_line_and_never_echoed(
    call: LocalCall, tmp_path: Path
) -> None:
    wrong = "wrong-secret-value-42"
    code, out, err = await _run(
        ["record", "--participant", _participant_flag(call), "--output-dir", str(tmp_path)],
        _env(call, tmp_path, BOT_REALTIME_APP_SECRET=wrong),
    )
    assert code == ExitCode.REALTIME_AUTH
    [line] = _human_lines(err)
    assert "unauthorized" in line and "BOT_REALTIME_APP_SECRET" in line
    assert wrong not in err + out
