"""CPU seconds and peak memory of one child process, read from the kernel.

``os.wait4`` returns the child's own rusage (user + system time of all its threads) and
``/proc/<pid>/status`` its peak resident set (``VmHWM``), so the figures cover exactly
the process under test: not the SFU, the publishers or this harness. The wait runs in
a thread so the event loop keeps serving the call while the child works. Each child is
a ``subprocess.Popen`` reaped here, never by asyncio's child watcher, which would take
the rusage with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_KIB = 1024
_MIB = 1024 * 1024
HWM_INTERVAL = 0.1
"""Seconds between readings of a measured child's peak RSS."""


@dataclass(frozen=True)
class Usage:
    """What the kernel accounted to one finished child."""

    cpu_seconds: float
    peak_rss_mb: float
    wall_seconds: float
    exit_code: int


class MeasuredProcess:
    """A child started now; ``wait()`` returns its usage once it exits."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: Path,
        stderr: Path,
    ) -> None:
        self._started = time.monotonic()
        with stdout.open("wb") as out, stderr.open("wb") as err:
            self._popen = subprocess.Popen(
                list(argv), env=dict(env) if env is not None else None, stdout=out, stderr=err
            )
        self.pid = self._popen.pid
        self.stdout_path = stdout
        self.stderr_path = stderr
        self._reaping: asyncio.Future[Usage] | None = None

    def rss_mb(self) -> float | None:
        """The resident set now (``VmRSS``); None once the process is gone."""
        kib = status_kib(self.pid, "VmRSS")
        return None if kib is None else kib * _KIB / _MIB

    def terminate(self) -> None:
        if self._popen.returncode is None:
            self._popen.terminate()

    async def wait(self) -> Usage:
        """The usage once the child exits; one reaping thread however many waiters."""
        if self._reaping is None:
            self._reaping = asyncio.ensure_future(asyncio.to_thread(self._reap))
        return await asyncio.shield(self._reaping)

    async def wait_or_stop(self, limit: float, grace: float = 30.0) -> tuple[Usage, bool]:
        """Wait up to ``limit`` seconds; then SIGTERM, and SIGKILL after ``grace``.

        Returns the usage and whether the process had to be stopped: a benchmark must
        end, and a contender that hangs is a finding to report, not a reason to wait on.
        A cancelled benchmark kills the child rather than leave it running.
        """
        try:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self.wait(), limit), False
            self._popen.terminate()
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self.wait(), grace), True
            self._popen.kill()
            return await self.wait(), True
        except asyncio.CancelledError:
            if self._popen.returncode is None:
                self._popen.kill()
            raise

    def _reap(self) -> Usage:
        """Poll until the child exits, keeping its ``VmHWM`` (peak RSS of its own image).

        ``ru_maxrss`` cannot be used for the peak: Linux carries the high-water mark of
        the image replaced by ``exec`` into it, and a child forked from this harness
        would report the harness's own ~90 MB. ``VmHWM`` belongs to the new image; it
        only grows, so the last reading before exit misses at most one interval's growth.
        """
        peak_kib = 0
        while True:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, status_kib(self.pid, "VmHWM") or 0)
            time.sleep(HWM_INTERVAL)
        exit_code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = exit_code  # reaped here: Popen must not wait again
        return Usage(
            cpu_seconds=rusage.ru_utime + rusage.ru_stime,
            peak_rss_mb=peak_kib * _KIB / _MIB,
            wall_seconds=time.monotonic() - self._started,
            exit_code=exit_code,
        )

    def stderr_tail(self, lines: int = 20) -> str:
        text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def status_kib(pid: int | str, field: str) -> int | None:
    """A KiB field of ``/proc/<pid>/status`` ("self" for this process); None once the
    process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def media_duration(path: Path) -> float:
    """The file's duration as Debian's ffprobe reads it (independent of PyAV)."""

    def probe() -> float:
        out = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "default=noprint_wrappers=1:nokey=1",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return float(out.stdout.strip())

    return await asyncio.to_thread(probe)


def machine_summary() -> str:
    """Cores, CPU model and load: figures from a shared machine need their context."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    load = Path("/proc/loadavg").read_text(encoding="ascii").split()[:3]
    return f"machine: {os.cpu_count()} cores, {model}, load average {' '.join(load)}"


async def video_packets(path: Path) -> int:
    """Encoded video frames in the file, over all its video streams (ffprobe's count)."""

    def probe() -> int:
        out = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v",
                "-count_packets",
                "-show_entries",
                "stream=nb_read_packets",
                "-of",
                "csv=p=0",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return sum(int(line) for line in out.stdout.split() if line.strip().isdigit())

    return await asyncio.to_thread(probe)
