"""``bot selftest`` against the local SFU and SeaweedFS, run as a clinic would run it.

The command runs as its own process with settings from the environment only, so the
tests see what a person sees: the step lines or the JSON report, the exit code, and no
traceback or secret on either stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from testbed.s3 import LocalS3
from testbed.stack import LocalCall, start_local_sfu

from bot.exitcodes import ExitCode

RUN_TIMEOUT = 120.0
REQUIRED = ("config", "auth", "publish", "pull", "ice", "first_frame", "upload", "verify")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    def steps(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.report()["steps"]}


@pytest.fixture
async def call() -> AsyncIterator[LocalCall]:
    """The local SFU alone: the selftest publishes its own participant."""
    local = await start_local_sfu()
    try:
        yield local
    finally:
        await local.close()


def _env(call: LocalCall, store: LocalS3, **extra: str) -> dict[str, str]:
    env = call.recorder_env(Path(tempfile.gettempdir()), **store.storage_env())
    env.update(extra)
    return env


async def _selftest(env: dict[str, str], *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "selftest",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def _objects(store: LocalS3) -> list[str]:
    response = store.client().list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


def _assert_clean_output(run: Run, *secrets: str) -> None:
    for stream in (run.stdout, run.stderr):
        assert "Traceback" not in stream
        for secret in secrets:
            assert secret not in stream


@pytest.mark.slow
async def test_every_step_passes_and_nothing_is_left(call: LocalCall, s3: LocalS3) -> None:
    run = await _selftest(_env(call, s3))
    _assert_clean_output(run, call.app_secret, s3.secret_access_key)
    assert run.code == ExitCode.OK, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "selftest passed (exit 0)"
    for name in (*REQUIRED, "cleanup"):
        line = next(line for line in lines if line.split()[1:2] == [name])
        assert line.split()[0] == "PASS", line
    rtx = next(line for line in lines if " rtx " in line)
    assert rtx.split()[0] in ("SEEN", "NOT", "UNKNOWN")
    assert _objects(s3) == []


@pytest.mark.slow
async def test_keep_leaves_the_object_and_its_manifest(call: LocalCall, s3: LocalS3) -> None:
    run = await _selftest(_env(call, s3), "--json", "--keep", "--duration", "4")
    assert run.code == ExitCode.OK, run.stdout + run.stderr
    report, steps = run.report(), run.steps()
    assert all(steps[name]["status"] == "pass" for name in REQUIRED), steps
    assert steps["cleanup"]["status"] == "kept"
    assert steps["simulcast"]["status"] == "not_seen"
    assert not steps["rtx"]["required"] and not steps["simulcast"]["required"]
    key = report["object_key"]
    assert key.startswith("selftest/") and key.endswith(".mp4")
    # The recording and its evidence (unsigned here: the selftest has no clinic key).
    beside = [".manifest.json", ".audit.jsonl", ".fhir.json"]
    assert _objects(s3) == sorted([key, *(key + suffix for suffix in beside)]) == report["kept"]
    assert all(s["seconds"] is not None for s in steps.values() if s["status"] == "pass")


async def test_wrong_app_secret_fails_at_auth(call: LocalCall, s3: LocalS3) -> None:
    wrong = "not-the-secret-" + call.app_secret[::-1]
    run = await _selftest(_env(call, s3, BOT_REALTIME_APP_SECRET=wrong), "--json")
    _assert_clean_output(run, wrong, call.app_secret, s3.secret_access_key)
    assert run.code == ExitCode.REALTIME_AUTH
    steps = run.steps()
    assert steps["config"]["status"] == "pass"
    assert steps["auth"]["status"] == "fail"
    assert "401" in steps["auth"]["detail"] and "BOT_REALTIME_APP_SECRET" in steps["auth"]["detail"]
    assert all(steps[n]["status"] == "skipped" for n in REQUIRED[2:])
    assert steps["cleanup"]["status"] == "pass"  # nothing was written
    assert _objects(s3) == []


async def test_wrong_app_secret_is_one_line_on_a_terminal(call: LocalCall, s3: LocalS3) -> None:
    run = await _selftest(_env(call, s3, BOT_REALTIME_APP_SECRET="wrong-secret-0123"))
    assert run.code == ExitCode.REALTIME_AUTH
    failing = [line for line in run.stdout.splitlines() if line.lstrip().startswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[1] == "auth"
    assert run.stdout.splitlines()[-1] == "selftest FAILED at auth (exit 3, REALTIME_AUTH)"
    assert run.stderr == ""


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("BOT_STORAGE_BACKEND", "local", "BOT_STORAGE_BACKEND=s3"),
        ("BOT_STORAGE_ENDPOINT_URL", "", "BOT_STORAGE_ENDPOINT_URL"),
        ("BOT_STORAGE_PART_SIZE", "12", "part_size"),
    ],
)
async def test_settings_without_a_bucket_are_a_config_error(
    call: LocalCall, s3: LocalS3, variable: str, value: str, named: str
) -> None:
    run = await _selftest(_env(call, s3, **{variable: value}), "--json")
    _assert_clean_output(run, call.app_secret, s3.secret_access_key)
    assert run.code == ExitCode.CONFIG
    steps = run.steps()
    assert steps["config"]["status"] == "fail" and named in steps["config"]["detail"]
    assert all(s["status"] == "skipped" for s in list(steps.values())[1:])


@pytest.mark.slow
async def test_wrong_bucket_credential_fails_at_upload(call: LocalCall, s3: LocalS3) -> None:
    wrong = "wrong-" + s3.secret_access_key
    env = _env(call, s3, BOT_STORAGE_SECRET_ACCESS_KEY=wrong)
    run = await _selftest(env, "--json", "--duration", "3")
    _assert_clean_output(run, wrong, call.app_secret)
    assert run.code == ExitCode.STORAGE, run.stdout + run.stderr
    steps = run.steps()
    assert all(steps[n]["status"] == "pass" for n in REQUIRED[:6]), steps
    upload = steps["upload"]
    assert upload["status"] == "fail"
    assert "rejected the credentials" in upload["detail"], upload
    assert "BOT_STORAGE_SECRET_ACCESS_KEY" in upload["detail"]
    assert "bot recover" not in upload["detail"]
    assert steps["verify"]["status"] == "skipped"
    assert _objects(s3) == []
