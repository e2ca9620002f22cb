"""The benchmarks still run: every contender, the scaling and compose runs and the soak,
on a few seconds of input.

The figures of so short a run mean nothing (startup dominates); what is checked is that
each piece of machinery (the call, the recorder, aiortc's MediaRecorder, ffmpeg's
composite, the RSS sampler) ran to the end and printed positive numbers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from bench.memory_soak import Soak

_NUMBER = r"(-?\d+(?:\.\d+)?)"
REPO = Path(__file__).resolve().parents[1]
"""``bench`` is not an installed package: run it from the repository root."""
_CONTENDERS = ("recorder", "aiortc MediaRecorder", "ffmpeg composite", "ffmpeg, x264 auto threads")


async def run_bench(*argv: str, limit: float) -> str:
    """``python -m <argv>`` from the repository root; its standard output once it exits 0.
    In its own process group, so the SFU, publishers and contenders go with it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *argv,
        cwd=REPO,
        start_new_session=True,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=limit)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode()


@pytest.mark.slow
@pytest.mark.timeout(600)  # minutes, not seconds, on a loaded 2-core machine
async def test_every_benchmark_runs_and_prints_positive_figures() -> None:
    text = await run_bench(
        "bench",
        "--seconds",
        "3",
        "--runs",
        "1",
        "--scaling-seconds",
        "3",
        "--sizes",
        "2",
        "--at-once",
        "2",
        "--compose-seconds",
        "4",
        "--minutes",
        "0.1",
        "--interval",
        "1",
        limit=540,
    )

    for name in _CONTENDERS:
        row = re.search(
            rf"^{name}\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}x\s+{_NUMBER}x$", text, re.MULTILINE
        )
        assert row is not None, f"no table row for {name}:\n{text}"
        cpu, rss, cpu_ratio, rss_ratio = (float(g) for g in row.groups())
        assert cpu > 0 and rss > 0 and cpu_ratio > 0 and rss_ratio > 0, row.group(0)

    # Composite and tracks for a call of two, then each twice at once.
    rows = re.findall(
        rf"^(composite|tracks)\s+2\s+([12])\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}%", text, re.M
    )
    assert sorted((mode, at_once) for mode, at_once, *_ in rows) == [
        ("composite", "1"),
        ("composite", "2"),
        ("composite", "2"),
        ("tracks", "1"),
        ("tracks", "2"),
        ("tracks", "2"),
    ], text
    assert all(float(cpu) > 0 and float(rss) > 0 for _, _, cpu, rss, _ in rows)
    composed = re.search(rf"compose: +{_NUMBER} s wall for {_NUMBER} s of media", text)
    assert composed is not None and float(composed.group(2)) > 3, text

    at_minute = re.search(rf"^RSS at \d+ s: {_NUMBER} MB$", text, re.MULTILINE)
    at_end = re.search(rf"^RSS at end \(\d+ s\): {_NUMBER} MB$", text, re.MULTILINE)
    slope = re.search(rf"^slope over the second half: {_NUMBER} MB/min: ", text, re.MULTILINE)
    assert at_minute and at_end and slope, text
    assert float(at_minute.group(1)) > 0 and float(at_end.group(1)) > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_scaling_benchmark_stores_through_the_s3_api_when_asked() -> None:
    """Two recorders at once in one SeaweedFS bucket: each finds its own records."""
    text = await run_bench(
        "bench.scaling",
        "--scaling-seconds",
        "3",
        "--sizes",
        "2",
        "--at-once",
        "2",
        "--store",
        "s3",
        limit=240,
    )
    assert "stored in S3 API into SeaweedFS" in text, text
    rows = re.findall(
        rf"^(composite|tracks)\s+2\s+([12])\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}%", text, re.M
    )
    assert len(rows) == 6 and all(float(kept) > 50 for *_, kept in rows), text


def test_soak_slope_ignores_the_first_half() -> None:
    # Startup growth (first half) then a steady 2 MB/min climb (second half).
    samples = [(float(t), 100.0 + t) for t in range(0, 60, 5)]
    samples += [(float(t), 160.0 + (t - 60) / 30) for t in range(60, 125, 5)]
    soak = Soak(minutes=2.0, samples=samples)
    assert soak.slope_mb_per_min() == pytest.approx(2.0)
    assert "2.00 MB/min: GROWING" in soak.report()
    flat = Soak(minutes=2.0, samples=[(float(t), 150.0) for t in range(0, 125, 5)])
    assert flat.slope_mb_per_min() == 0.0
    assert "flat" in flat.report()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_custody_benchmark_runs_and_prints_its_share() -> None:
    text = await run_bench(
        "bench.custody_cost",
        "--seconds",
        "3",
        "--runs",
        "1",
        limit=240,
    )
    fragments = re.search(rf"recording: {_NUMBER} media s, (\d+) fragments", text)
    assert fragments is not None and int(fragments.group(2)) >= 2, text
    share = re.search(rf"custody share of the recorder: {_NUMBER} %", text)
    assert share is not None and 0 <= float(share.group(1)) < 100, text


@pytest.mark.timeout(180)
async def test_the_receive_path_benchmark_delivers_every_packet_both_ways() -> None:
    text = await run_bench("bench.receive_path", "--packets", "300", "--runs", "1", limit=150)
    for way in ("aiortc", "on arrival"):
        row = re.search(rf"^{way} +{_NUMBER} +(\d+)$", text, re.MULTILINE)
        assert row is not None, text
        assert float(row.group(1)) > 0 and int(row.group(2)) == 300, text
    assert re.search(rf"on arrival / aiortc's way: {_NUMBER}", text), text


@pytest.mark.timeout(180)
async def test_the_decoder_threads_benchmark_decodes_both_ways_and_counts_threads() -> None:
    text = await run_bench("bench.decoder_threads", "--frames", "30", "--runs", "1", limit=150)
    for codec in ("VP8", "H264"):
        ours = re.search(rf"^{codec} +one thread \(recorder\) +(\d+) +{_NUMBER}", text, re.M)
        pyavs = re.search(rf"^{codec} +PyAV default +(\d+) +{_NUMBER}", text, re.M)
        assert ours is not None and pyavs is not None, text
        assert int(ours.group(1)) == 0 and float(ours.group(2)) > 0, text
        assert float(pyavs.group(2)) > 0, text
