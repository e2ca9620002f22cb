"""Memory cap: the peak RSS of a short two-party `bot record`, read from the kernel."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from testbed.stack import LocalCall, participant_flag

from bot.exitcodes import ExitCode

pytestmark = pytest.mark.slow

PEAK_RSS_CAP = 700 * 1024 * 1024
"""Generous for a shared CI machine; the figure printed is what goes into the README."""


@pytest.fixture
def call(two_party_call: LocalCall) -> LocalCall:
    return two_party_call


def _vm(pid: int, field: str) -> int | None:
    """A ``Vm*`` figure of a live process; None once it has exited (a zombie has none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


async def test_peak_rss_of_a_short_recording(call: LocalCall, tmp_path: Path) -> None:
    flags = []
    for p in call.participants:
        flags += ["--participant", participant_flag(p)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "record",
        *flags,
        "--max-duration",
        "15",
        "--consultation-id",
        "c-rss",
        env=call.recorder_env(tmp_path, BOT_LOGGING_LEVEL="warning"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    peak = 0
    try:
        async with asyncio.timeout(180):
            while process.returncode is None:
                try:
                    high_water = _vm(process.pid, "VmHWM")  # the kernel's own high-water mark
                except (FileNotFoundError, ProcessLookupError):
                    break
                if high_water is None:
                    break
                peak = max(peak, high_water)
                await asyncio.sleep(0.2)  # sampling a child's /proc file: it has no event
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == ExitCode.OK
    assert list((tmp_path / "out").glob("consultations/*/c-rss/*.mp4"))
    print(f"\npeak RSS of a 15 s two-party recording: {peak / 2**20:.0f} MiB")
    assert 0 < peak < PEAK_RSS_CAP
