"""Memory soak: the recorder recording two participants for minutes, its RSS sampled.

A recorder that leaks shows a steady climb once its buffers, encoder and jitter buffers
have filled; startup growth is not a leak. So the verdict uses the least-squares slope
of RSS over the second half of the run only: "flat" below 1 MB per minute.

    python -m bench.memory_soak --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bench.measure import machine_summary
from bench.runners import (
    BenchError,
    Measurement,
    finish_recorder,
    start_recorder,
    start_two_party_call,
)
from bot.logs import configure_logging

log = structlog.get_logger("bot.bench")

FLAT_SLOPE_MB_PER_MIN = 1.0


@dataclass
class Soak:
    minutes: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the recorder started, RSS MB)."""
    measurement: Measurement | None = None
    machine: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the recorder did not finish cleanly, if it did not."""

    def rss_at(self, seconds: float) -> tuple[float, float]:
        """The sample nearest ``seconds``: (its time, its RSS)."""
        return min(self.samples, key=lambda s: abs(s[0] - seconds))

    def slope_mb_per_min(self) -> float:
        """Least-squares RSS slope over the second half of the samples."""
        half = self.samples[len(self.samples) // 2 :]
        if len(half) < 2:
            return 0.0
        n = len(half)
        mean_t = sum(t for t, _ in half) / n
        mean_r = sum(r for _, r in half) / n
        var = sum((t - mean_t) ** 2 for t, _ in half)
        cov = sum((t - mean_t) * (r - mean_r) for t, r in half)
        return cov / var * 60.0 if var else 0.0

    def report(self) -> str:
        first_t, first = self.rss_at(60.0)
        last_t, last = self.samples[-1]
        slope = self.slope_mb_per_min()
        lines = [
            f"recorder memory over {self.minutes:g} min of two-party media "
            f"({len(self.samples)} samples)",
            *self.machine,
            f"RSS at {first_t:.0f} s: {first:.1f} MB",
            f"RSS at end ({last_t:.0f} s): {last:.1f} MB",
        ]
        minutes = range(1, int(last_t // 60) + 1)
        by_minute = "  ".join(f"{self.rss_at(60.0 * m)[1]:.0f}" for m in minutes)
        lines.append(f"RSS MB at each minute: {by_minute}")
        if self.measurement is not None:
            m = self.measurement
            lines.append(f"peak RSS: {m.usage.peak_rss_mb:.1f} MB")
            lines.append(f"CPU s per media s: {m.cpu_per_media_second:.3f}")
        if self.error is not None:
            lines.append(f"recorder FAILED: {self.error}")
        verdict = "flat" if slope < FLAT_SLOPE_MB_PER_MIN else "GROWING"
        lines.append(f"slope over the second half: {slope:.2f} MB/min: {verdict}")
        return "\n".join(lines)


async def soak(minutes: float, interval: float, workdir: Path) -> Soak:
    result = Soak(minutes, machine=[machine_summary()])
    call = await start_two_party_call()
    try:
        process = start_recorder(call, workdir, minutes * 60.0)
        log.info("bench.soak_started", minutes=minutes, interval=interval)
        loop = asyncio.get_running_loop()
        started = loop.time()
        finished = asyncio.ensure_future(finish_recorder(process, workdir, minutes * 60.0))
        try:
            while not finished.done():
                rss = process.rss_mb()
                if rss is not None:
                    result.samples.append((loop.time() - started, rss))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(finished), interval)
            try:
                result.measurement = await finished
            except BenchError as exc:
                # The samples are the finding: report them with the failure.
                result.error = str(exc).splitlines()[0]
        finally:
            if not finished.done():
                process.terminate()
                await process.wait()
    finally:
        await call.close()
    result.machine.append(machine_summary())
    return result


async def run_soak(minutes: float, interval: float) -> Soak:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        return await soak(minutes, interval, Path(tmp))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="recording length")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_soak")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("info")
    print(asyncio.run(run_soak(args.minutes, args.interval)).report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
