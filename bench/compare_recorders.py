"""One-minute comparison: the recorder, aiortc's MediaRecorder and an ffmpeg composite,
and the recorder's own composite on ffmpeg's files (``bench.media_path``), which tells
what the composite costs apart from what receiving the call does.

All of them take the same input (two synthetic participants, VP8 640x360 at 30 fps with
Opus), in one command so they share the machine's noise, run after run in turn. Each
figure is the median over ``--runs``. CPU seconds per media second is rate-independent,
so ffmpeg runs as fast as it can on pre-recorded files while the two live contenders
run in real time.

    python -m bench.compare_recorders --seconds 60 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bench.inputs import write_participant_input
from bench.measure import machine_summary, median
from bench.runners import (
    FFMPEG,
    FFMPEG_DEFAULT_THREADS,
    MEDIA_PATH,
    Measurement,
    run_aiortc_baseline,
    run_ffmpeg,
    run_media_path,
    run_recorder,
    start_two_party_call,
)
from bot.logs import configure_logging

log = structlog.get_logger("bot.bench")

RECORDER, AIORTC = "recorder", "aiortc MediaRecorder"
CPU_TARGET = 0.5
"""CPU seconds per media second the recorder must stay under."""
FFMPEG_RATIO_TARGET = 1.15
"""How far above ffmpeg's CPU figure the recorder may be (issue #14; issue #4 had 1.3)."""


@dataclass
class Comparison:
    seconds: float
    measurements: dict[str, list[Measurement]] = field(default_factory=dict)
    machine: list[str] = field(default_factory=list)
    """The machine and its load before the first run and after the last."""

    def add(self, measurement: Measurement) -> None:
        self.measurements.setdefault(measurement.name, []).append(measurement)

    def cpu(self, name: str) -> float:
        return median([m.cpu_per_media_second for m in self.measurements.get(name, [])])

    def rss(self, name: str) -> float:
        return median([m.usage.peak_rss_mb for m in self.measurements.get(name, [])])

    def report(self) -> str:
        runs = max((len(v) for v in self.measurements.values()), default=0)
        lines = [f"{self.seconds:g} s of two-party media, median of {runs} run(s)"]
        lines += [*self.machine, ""]
        lines.append("per run (CPU s per media s / peak RSS MB / media s):")
        for name, items in self.measurements.items():
            cells = "  ".join(
                f"{m.cpu_per_media_second:.3f}/{m.usage.peak_rss_mb:.0f}/{m.media_seconds:.1f}"
                + (f" ({m.frames_kept:.0%} frames)" if m.frames_kept is not None else "")
                for m in items
            )
            lines.append(f"  {name:<28}{cells}")
        lines.append("")
        header = f"{'contender':<28}{'CPU s/media s':>14}{'peak RSS MB':>13}"
        lines.append(header + f"{'CPU vs ffmpeg':>15}{'RSS vs ffmpeg':>15}")
        base_cpu, base_rss = self.cpu(FFMPEG), self.rss(FFMPEG)
        for name in (RECORDER, AIORTC, FFMPEG, FFMPEG_DEFAULT_THREADS, MEDIA_PATH):
            cpu, rss = self.cpu(name), self.rss(name)
            lines.append(
                f"{name:<28}{cpu:>14.3f}{rss:>13.1f}"
                f"{cpu / base_cpu:>14.2f}x{rss / base_rss:>14.2f}x"
            )
        lines += [
            "",
            f"target CPU < {CPU_TARGET} s per media s: "
            + ("met" if self.cpu(RECORDER) < CPU_TARGET else "NOT met"),
        ]
        for name in (FFMPEG, FFMPEG_DEFAULT_THREADS):
            ratio = self.cpu(RECORDER) / self.cpu(name)
            lines.append(
                f"target CPU within {FFMPEG_RATIO_TARGET}x of {name}: "
                + ("met" if ratio <= FFMPEG_RATIO_TARGET else "NOT met")
                + f" ({ratio:.2f}x)"
            )
        return "\n".join(lines)


async def compare(seconds: float, runs: int, workdir: Path) -> Comparison:
    """Render ffmpeg's inputs, start the call, then run each contender ``runs`` times."""
    inputs = [workdir / f"participant{n}.webm" for n in (1, 2)]
    log.info("bench.rendering_inputs", seconds=seconds)
    await asyncio.gather(
        *(
            asyncio.to_thread(write_participant_input, path, n, seconds)
            for n, path in enumerate(inputs, start=1)
        )
    )
    result = Comparison(seconds, machine=[machine_summary()])
    call = await start_two_party_call()
    try:
        for run in range(1, runs + 1):
            base = workdir / f"run{run}"
            result.add(await run_recorder(call, base / "recorder", seconds))
            result.add(await run_aiortc_baseline(call, base / "aiortc", seconds))
            result.add(await run_ffmpeg(inputs, base / "ffmpeg", seconds))
            result.add(
                await run_ffmpeg(
                    inputs, base / "ffmpeg-default-threads", seconds, x264_default_threads=True
                )
            )
            result.add(await run_media_path(inputs, base / "media-path", seconds))
            log.info("bench.run_done", run=run, runs=runs)
    finally:
        await call.close()
    result.machine.append(machine_summary())
    return result


async def run_compare(seconds: float, runs: int) -> Comparison:
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        return await compare(seconds, runs, Path(tmp))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="media seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (median)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_recorders")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("info")
    print(asyncio.run(run_compare(args.seconds, args.runs)).report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
