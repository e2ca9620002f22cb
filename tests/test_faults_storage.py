"""Storage faults under a real recording: outage, slow store, wrong credentials, full disk.

The recorder runs in-process against the local SFU and two synthetic participants (their
own processes) and uploads to SeaweedFS through a ``ThrottlingProxy`` that the test cuts,
throttles and redirects. Figures are printed (``pytest -s``) for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog

from bot.exitcodes import ExitCode
from bot.recorder import Recorder, RecordingResult
from bot.storage.verify import fragment_layout
from bot.testbed.proxy import ThrottlingProxy
from bot.testbed.s3 import LocalS3
from bot.testbed.stack import LocalCall
from tests.e2e import ffprobe, recorder_settings
from tests.faults import SMALL_PART, small_part_settings, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def call(two_party_call: LocalCall) -> LocalCall:
    return two_party_call


@pytest.fixture
def proxy(s3: LocalS3) -> Iterator[ThrottlingProxy]:
    port = urlsplit(s3.endpoint_url).port
    assert port is not None
    with ThrottlingProxy(("127.0.0.1", port)) as p:
        yield p


class Events:
    """structlog events seen while the recorder runs (from every thread)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def names(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("event") == name]


@contextlib.contextmanager
def captured() -> Iterator[Events]:
    events = Events()
    with structlog.testing.capture_logs() as seen:
        events.seen = seen
        yield events


def _status(recorder: Recorder) -> dict[str, Any]:
    return recorder.status()


@pytest.mark.skip(
    reason="SeaweedFS refuses parts under 5 MiB at completion (EntityTooSmall) and a test "
    "recording makes ~60 KB/s: needs >= 5 MiB of media per phase; see test_storage_recover"
)
async def test_outage_slow_store_and_wrong_credentials_mid_recording(
    call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    outage = float(os.environ.get("BOT_FAULTS_OUTAGE_SECONDS", "20"))
    storage = small_part_settings(
        s3,
        proxy.url,
        spool_dir=tmp_path / "spool",
        retry_backoff_max=1.0,
        max_attempts=1,
        connect_timeout=1.0,
        read_timeout=5.0,
    )
    settings = recorder_settings(call, tmp_path, storage=storage, max_duration=600)
    recorder = Recorder(settings)
    figures: dict[str, float] = {}
    with captured() as events:
        task = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 60)
        await wait_until(lambda: _status(recorder)["bytes_uploaded"] >= 2 * SMALL_PART, 60, "parts")

        # 1. The store is unreachable: the recording goes on to the spool, with an alarm.
        proxy.cut()
        before = _status(recorder)
        await wait_until(lambda: _status(recorder)["upload_alarm"], 30, "outage alarm")
        await asyncio.sleep(outage)  # the outage itself: a duration, not a synchronisation
        during = _status(recorder)
        assert during["bytes_recorded"] > before["bytes_recorded"] + 2 * SMALL_PART
        assert during["bytes_uploaded"] <= before["bytes_uploaded"] + SMALL_PART
        assert "cannot reach the object store" in (during["last_error"] or "")
        figures["outage_s"] = outage
        figures["outage_backlog_bytes"] = during["bytes_recorded"] - during["bytes_uploaded"]
        proxy.restore()
        figures["outage_catch_up_s"] = await wait_until(
            lambda: (
                not _status(recorder)["upload_alarm"]
                and _status(recorder)["bytes_recorded"] - _status(recorder)["bytes_uploaded"]
                < 2 * SMALL_PART
            ),
            60,
            "catch-up after the outage",
        )

        # 2. A slow store (below the recording's byte rate): the lag grows, no data is lost.
        rate = 8 * 1024
        proxy.rate = rate
        start_lag = _status(recorder)["bytes_recorded"] - _status(recorder)["bytes_uploaded"]
        await wait_until(
            lambda: (
                _status(recorder)["bytes_recorded"] - _status(recorder)["bytes_uploaded"]
                > start_lag + 3 * SMALL_PART
            ),
            60,
            "lag growing on a throttled store",
        )
        figures["throttle_bytes_per_s"] = rate
        figures["throttle_peak_lag_bytes"] = (
            _status(recorder)["bytes_recorded"] - _status(recorder)["bytes_uploaded"]
        )
        proxy.rate = None
        figures["throttle_catch_up_s"] = await wait_until(
            lambda: (
                _status(recorder)["bytes_recorded"] - _status(recorder)["bytes_uploaded"]
                < 2 * SMALL_PART
            ),
            60,
            "catch-up after throttling",
        )

        # 3. Wrong credentials: the endpoint answers but no longer knows the recorder's key.
        async with LocalS3() as stranger:
            port = urlsplit(stranger.endpoint_url).port
            assert port is not None
            home = proxy.target
            proxy.redirect(("127.0.0.1", port))
            await wait_until(
                lambda: "rejected the credentials" in (_status(recorder)["last_error"] or ""),
                30,
                "credentials alarm",
            )
            assert _status(recorder)["upload_alarm"]
            rejected = _status(recorder)
            proxy.redirect(home)
        figures["credentials_catch_up_s"] = await wait_until(
            lambda: (
                not _status(recorder)["upload_alarm"]
                and _status(recorder)["bytes_uploaded"] > rejected["bytes_uploaded"]
            ),
            60,
            "catch-up after the credentials came back",
        )
        recorder.stop()
        result: RecordingResult = await asyncio.wait_for(task, 120)

    assert result.exit_code == ExitCode.OK, result.error
    assert result.upload is not None
    alarms = events.names("storage_alarm")
    assert {a["kind"] for a in alarms} >= {"unreachable", "credentials"}
    assert len(events.names("storage_alarm_cleared")) >= 2
    body = s3.client().get_object(Bucket=s3.bucket, Key=result.upload.object_key)["Body"].read()
    assert len(body) == result.upload.size
    local = tmp_path / "got.mp4"
    local.write_bytes(body)
    duration = float(ffprobe(local)["format"]["duration"])
    assert duration >= result.media.duration - 1.5
    figures["recording_s"] = round(result.media.duration, 1)
    figures["parts"] = result.upload.parts
    figures["alarms"] = len(alarms)
    print("\nstorage faults:", {k: round(v, 2) for k, v in figures.items()})


async def _record_until_disk_limit(
    call: LocalCall, s3: LocalS3, tmp_path: Path, spool_dir: Path, **limits: int
) -> tuple[RecordingResult, Events, Recorder]:
    storage = s3.storage_settings(spool_dir=spool_dir, **limits)
    settings = recorder_settings(call, tmp_path, storage=storage, max_duration=120)
    recorder = Recorder(settings)
    with captured() as events:
        result = await asyncio.wait_for(recorder.run(), 150)
    return result, events, recorder


def _assert_playable(s3: LocalS3, result: RecordingResult, tmp_path: Path) -> float:
    assert result.upload is not None, result.error
    body = s3.client().get_object(Bucket=s3.bucket, Key=result.upload.object_key)["Body"].read()
    local = tmp_path / "limited.mp4"
    local.write_bytes(body)
    info = ffprobe(local)
    assert {s["codec_name"] for s in info["streams"]} == {"h264", "aac"}
    layout = fragment_layout(local, len(body))
    # A finished file ends on its last fragment, or on the fragment index (mfra) after it.
    trailer = body[layout.last_fragment[1] :]
    assert trailer == b"" or trailer[4:8] == b"mfra", "the file ends on a complete fragment"
    return float(info["format"]["duration"])


async def test_spool_cap_stops_the_recording_cleanly(
    call: LocalCall, s3: LocalS3, tmp_path: Path
) -> None:
    cap = 1024 * 1024
    result, events, _ = await _record_until_disk_limit(
        call, s3, tmp_path, tmp_path / "spool", max_spool_bytes=cap
    )
    assert result.stop_reason == "disk_limit"
    assert result.exit_code == ExitCode.STORAGE
    assert "max_spool_bytes" in (result.error or "")
    [event] = events.names("storage_disk_limit")
    assert event["limit"] == "max_spool_bytes"
    duration = _assert_playable(s3, result, tmp_path)
    assert result.upload is not None
    over = result.upload.size - cap
    print(
        f"\nmax_spool_bytes={cap}: stopped at {result.upload.size} B ({over:+} B), {duration:.1f} s"
    )
    assert over < 512 * 1024, "only the fragment being written when the limit hit"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: a disk that really fills up (needs root, as in this sandbox/CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        check=False,
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_filling_up_stops_the_recording_cleanly(
    call: LocalCall, s3: LocalS3, tmp_path: Path, small_disk: Path
) -> None:
    """Another process fills the spool's disk; the recorder stops before ENOSPC."""
    min_free = 8 * 1024 * 1024
    storage = s3.storage_settings(spool_dir=small_disk / "spool", min_free_bytes=min_free)
    settings = recorder_settings(call, tmp_path, storage=storage, max_duration=120)
    recorder = Recorder(settings)
    with captured() as events:
        task = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 60)
        await wait_until(lambda: _status(recorder)["bytes_recorded"] > 200_000, 60, "media")
        filler = small_disk / "filler"
        with filler.open("wb") as out:  # someone else's 16 MiB log file
            out.write(b"\0" * (16 * 1024 * 1024))
        result = await asyncio.wait_for(task, 60)
    assert result.stop_reason == "disk_limit"
    assert result.exit_code == ExitCode.STORAGE
    [event] = events.names("storage_disk_limit")
    assert event["limit"] == "min_free_bytes"
    duration = _assert_playable(s3, result, tmp_path)
    print(f"\nmin_free_bytes={min_free}: stopped cleanly after {duration:.1f} s of media")
