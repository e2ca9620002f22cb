"""What a recording costs as calls grow, composite against tracks, and several at once.

For 2, 4 and 6 participants (the grid grows), the recorder records the same live call in
``composite`` mode and in ``tracks`` mode, one after the other so both share the
machine's noise; then three recordings of one two-party call run at once, in each mode.
Each figure is the recorder process's own (CPU seconds per media second, peak RSS),
with what it kept: composite output frames that were real pictures rather than repeats
of the last one (the media thread fell behind real time), and input frames dropped from
its queues; archived track frames against what was sent. The publishers (each a VP8
encoder) run on the same two cores, so with six of them the machine is saturated:
what gives first is reported, not hidden.

    python -m bench.scaling --scaling-seconds 60

The store is a local folder by default; ``--store s3`` puts every recording through the S3
API into SeaweedFS (the R2 stand-in), as production does: boto3 and its client are then
in the recorder's memory and its uploads in its CPU.
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
from typing import Any

import structlog
from testbed.s3 import LocalS3
from testbed.stack import LocalCall, participant_flag, start_local_sfu

from bench.measure import MeasuredProcess, machine_summary
from bench.runners import INPUT_FPS, STOP_GRACE, BenchError
from bot.logs import configure_logging

log = structlog.get_logger("bot.bench")

ROLES = ("clinician", "patient", "interpreter", "family", "nurse", "specialist")
TRACKS_CPU_TARGET = 0.05
TRACKS_RSS_TARGET_MB = 120.0


@dataclass(frozen=True)
class Run:
    """One recorder process: its mode, call size, usage and what it kept."""

    mode: str
    participants: int
    concurrent: int
    cpu_per_media_s: float
    peak_rss_mb: float
    kept: float
    """Composite: share of output frames that were fresh pictures; tracks: share of the
    sent video frames archived."""
    dropped: int
    """Input frames dropped from the media thread's queues (composite only)."""


async def start_call(participants: int) -> LocalCall:
    call = await start_local_sfu()
    try:
        for number in range(1, participants + 1):
            await call.publish(ROLES[number - 1], number, participant_id=f"p{number}")
    except BaseException:
        await call.close()
        raise
    return call


@dataclass(frozen=True)
class Job:
    """One recorder process started, where it writes and in which mode."""

    process: MeasuredProcess
    workdir: Path
    mode: str
    consultation: str
    """Unique per job: its keys in a shared bucket are found by it."""


def start(
    call: LocalCall, workdir: Path, seconds: float, mode: str, s3: LocalS3 | None = None
) -> Job:
    workdir.mkdir(parents=True, exist_ok=True)
    consultation = f"bench-{workdir.parent.name}-{workdir.name}"
    argv = [sys.executable, "-m", "bot", "record", "--consultation-id", consultation]
    for participant in call.participants:
        argv += ["--participant", participant_flag(participant)]
    argv += ["--max-duration", f"{seconds:g}"]
    env = call.recorder_env(workdir, BOT_RECORDING_MODE=mode)
    if s3 is not None:
        env.update(s3.storage_env())
    process = MeasuredProcess(
        argv, env=env, stdout=workdir / "recorder.out", stderr=workdir / "recorder.err"
    )
    return Job(process, workdir, mode, consultation)


def stored_records(job: Job, s3: LocalS3 | None) -> list[dict[str, Any]]:
    """Every manifest the job stored (its recording's and, in tracks mode, each track's)."""
    if s3 is None:
        manifests = sorted((job.workdir / "out").rglob("*.manifest.json"))
        return [json.loads(m.read_text()) for m in manifests]
    client = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    keys = [
        item["Key"]
        for page in pages
        for item in page.get("Contents", [])
        if f"/{job.consultation}/" in item["Key"] and item["Key"].endswith(".manifest.json")
    ]
    return [json.loads(client.get_object(Bucket=s3.bucket, Key=k)["Body"].read()) for k in keys]


async def finish(
    job: Job, seconds: float, participants: int, at_once: int, s3: LocalS3 | None
) -> Run:
    usage, stopped = await job.process.wait_or_stop(seconds + STOP_GRACE)
    if stopped or usage.exit_code != 0:
        raise BenchError(
            f"recorder ({job.mode}) exited {usage.exit_code}:\n" + job.process.stderr_tail()
        )
    records = await asyncio.to_thread(stored_records, job, s3)
    main = next(r for r in records if r.get("track") is None)
    if job.mode == "tracks":
        video = sum(t["frames"] for t in main["archive"] if t["kind"] == "video")
        kept = video / (INPUT_FPS * seconds * participants)
        dropped = 0
    else:
        sync = main["sync"]
        frames = sync["video_frames"]
        kept = (frames - sync["video_frames_repeated"]) / frames
        dropped = sync["video_frames_dropped_in_queue"]
    cpu = usage.cpu_seconds / seconds
    return Run(job.mode, participants, at_once, cpu, usage.peak_rss_mb, kept, dropped)


async def measure(
    call: LocalCall,
    workdir: Path,
    seconds: float,
    mode: str,
    at_once: int,
    *,
    s3: LocalS3 | None = None,
) -> list[Run]:
    """``at_once`` recorders of ``call`` in ``mode``, started together."""
    jobs = [start(call, workdir / f"{mode}-{i}", seconds, mode, s3) for i in range(at_once)]
    size = len(call.participants)
    log.info("bench.scaling_run", mode=mode, participants=size, at_once=at_once)
    return list(await asyncio.gather(*(finish(j, seconds, size, at_once, s3) for j in jobs)))


async def run_scaling(
    seconds: float, sizes: Sequence[int], at_once: int, s3: LocalS3 | None = None
) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for size in sizes:
            call = await start_call(size)
            try:
                for mode in ("composite", "tracks"):
                    runs += await measure(call, Path(tmp) / f"n{size}", seconds, mode, 1, s3=s3)
                if size == 2 and at_once > 1:
                    for mode in ("composite", "tracks"):
                        base = Path(tmp) / f"n{size}-x{at_once}"
                        runs += await measure(call, base, seconds, mode, at_once, s3=s3)
            finally:
                await call.close()
    return runs


def report(runs: list[Run], seconds: float, machine: list[str], store: str = "local") -> str:
    where = "S3 API into SeaweedFS" if store == "s3" else "a local folder"
    lines = [f"{seconds:g} s per run, stored in {where}", *machine, ""]
    lines.append(
        f"{'mode':<10}{'people':>7}{'at once':>8}{'CPU s/media s':>15}{'peak RSS MB':>13}"
        f"{'kept':>8}{'dropped':>9}"
    )
    for r in runs:
        lines.append(
            f"{r.mode:<10}{r.participants:>7}{r.concurrent:>8}{r.cpu_per_media_s:>15.3f}"
            f"{r.peak_rss_mb:>13.0f}{r.kept:>8.1%}{r.dropped:>9}"
        )
    pairs = [
        (c, t)
        for c in runs
        for t in runs
        if c.mode == "composite"
        and t.mode == "tracks"
        and c.concurrent == t.concurrent == 1
        and c.participants == t.participants
    ]
    lines.append("")
    for c, t in pairs:
        cpu, rss = c.cpu_per_media_s / t.cpu_per_media_s, c.peak_rss_mb / t.peak_rss_mb
        lines.append(
            f"{c.participants} participants: tracks mode {cpu:.1f}x cheaper in CPU, "
            f"{rss:.1f}x in memory"
        )
    two = [t for t in runs if t.mode == "tracks" and t.participants == 2 and t.concurrent == 1]
    if two:
        t = two[0]
        met = t.cpu_per_media_s <= TRACKS_CPU_TARGET and t.peak_rss_mb <= TRACKS_RSS_TARGET_MB
        lines.append(
            f"target tracks mode (2 people) <= {TRACKS_CPU_TARGET} CPU s/media s and <= "
            f"{TRACKS_RSS_TARGET_MB:g} MB: " + ("met" if met else "NOT met")
        )
    return "\n".join(lines)


async def run_report(
    seconds: float, sizes: Sequence[int], at_once: int, store: str = "local"
) -> str:
    """The whole scaling run, as the report it prints."""
    machine = [machine_summary()]
    if store == "s3":
        async with LocalS3() as s3:
            runs = await run_scaling(seconds, sizes, at_once, s3)
    else:
        runs = await run_scaling(seconds, sizes, at_once)
    machine.append(machine_summary())
    return report(runs, seconds, machine, store)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scaling-seconds", type=float, default=60.0, help="media seconds per scaling run"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 6], help="call sizes")
    parser.add_argument("--at-once", type=int, default=3, help="concurrent recordings of 2")
    parser.add_argument(
        "--store",
        choices=("local", "s3"),
        default="local",
        help="where recordings go: a local folder, or the S3 API into SeaweedFS",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("info")
    text = asyncio.run(run_report(args.scaling_seconds, args.sizes, args.at_once, args.store))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
