"""A long tracks-only recording, then ``bot compose`` of it: both measured.

Records a two-party call for ``--seconds`` (default ten minutes) in ``tracks`` mode with
``bot record``, then composes it with ``bot compose --key`` as an operator (or the
Kubernetes Job in ``deploy/``) would, each a measured child process. Reports the
recorder's CPU per media second and peak RSS over the whole recording (start and finish
included), and compose's wall time, speed against real time, CPU and peak RSS.

    python -m bench.compose_speed --compose-seconds 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from bench.measure import MeasuredProcess, Usage, machine_summary
from bench.runners import STOP_GRACE, BenchError, start_two_party_call
from bench.scaling import start
from bot.logs import configure_logging

log = structlog.get_logger("bot.bench")

COMPOSE_TARGET_S = 300.0
"""Wall time allowed for composing a ten-minute two-party recording."""


@dataclass(frozen=True)
class ComposeRun:
    seconds: float
    recorder: Usage
    compose: Usage
    media_seconds: float
    threads: int

    def report(self) -> str:
        rec, comp = self.recorder, self.compose
        target = COMPOSE_TARGET_S * self.seconds / 600
        return "\n".join(
            [
                f"tracks-only recording of {self.seconds:g} s, then bot compose "
                f"(x264 threads {self.threads})",
                f"  recorder: {rec.cpu_seconds / self.seconds:.4f} CPU s per media s "
                f"(all-in), peak RSS {rec.peak_rss_mb:.0f} MB",
                f"  compose:  {comp.wall_seconds:.1f} s wall for {self.media_seconds:.1f} s of "
                f"media ({self.media_seconds / comp.wall_seconds:.1f}x real time), "
                f"{comp.cpu_seconds / self.media_seconds:.3f} CPU s per media s, "
                f"peak RSS {comp.peak_rss_mb:.0f} MB",
                f"target compose under {target:.0f} s wall: "
                + ("met" if comp.wall_seconds < target else "NOT met"),
            ]
        )


async def run(seconds: float, threads: int, workdir: Path) -> ComposeRun:
    call = await start_two_party_call()
    try:
        job = start(call, workdir / "record", seconds, "tracks")
        recorder, stopped = await job.process.wait_or_stop(seconds + STOP_GRACE)
        if stopped or recorder.exit_code != 0:
            raise BenchError("recorder failed:\n" + job.process.stderr_tail())
    finally:
        await call.close()
    [record] = (workdir / "record" / "out").rglob("recording.manifest.json")
    manifest = json.loads(record.read_text())
    key = manifest["archive"][0]["object_key"].rsplit(".tracks/", 1)[0] + ".mp4"
    env = call.recorder_env(workdir / "record")
    argv = [sys.executable, "-m", "bot", "compose", "--key", key, "--threads", str(threads)]
    log.info("bench.compose_started", key=key)
    process = MeasuredProcess(
        argv, env=env, stdout=workdir / "compose.out", stderr=workdir / "compose.err"
    )
    usage = await process.wait()
    if usage.exit_code != 0:
        raise BenchError("compose failed:\n" + process.stderr_tail())
    composed = json.loads((workdir / "record" / "out" / f"{key}.manifest.json").read_text())
    return ComposeRun(seconds, recorder, usage, float(composed["duration_seconds"]), threads)


async def run_report(seconds: float, threads: int) -> str:
    """The recording and its composition, as the report it prints."""
    before = machine_summary()
    with tempfile.TemporaryDirectory(prefix="bench-compose-") as tmp:
        result = await run(seconds, threads, Path(tmp))
    return "\n".join([before, result.report(), machine_summary()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compose-seconds", type=float, default=600.0, help="media seconds to record, compose"
    )
    parser.add_argument("--threads", type=int, default=2, help="x264 threads for compose")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compose_speed", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("info")
    print(asyncio.run(run_report(args.compose_seconds, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
