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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog
from testbed.proxy import ThrottlingProxy
from testbed.s3 import LocalS3
from testbed.stack import LocalCall

from bot.exitcodes import ExitCode
from bot.recording import Recorder, RecordingResult
from bot.storage.spool import Spool
from bot.storage.verify import fragment_layout
from tests.e2e import ffprobe, recorder_settings
from tests.faults import wait_until

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
    return recorder.status().as_dict()


PART = 5 * 1024 * 1024
"""R2's (and SeaweedFS's) minimum part, the part size of these recordings: the real size,
so completion is real too. A test recording makes ~130 KB/s, so a part is ready about
every 40 s (the default 8 MiB would take a minute, several on a loaded CI machine)."""


def _lag(recorder: Recorder) -> int:
    status = _status(recorder)
    return int(status["bytes_recorded"] - status["bytes_uploaded"])


def _upload_open(tmp_path: Path) -> bool:
    """The recording's multipart upload is open: the store has answered, no call is in
    flight, and the next one is a part or the probe."""
    journals = [spool.journal() for spool in Spool.scan(tmp_path / "spool")]
    return any(j is not None and j.upload_id is not None for j in journals)


def _recorder(call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, tmp_path: Path) -> Recorder:
    storage = s3.storage_settings(
        endpoint_url=proxy.url,
        spool_dir=tmp_path / "spool",
        part_size=PART,
        retry_backoff_max=2.0,
        connect_timeout=1.0,
        read_timeout=10.0,
    )
    return Recorder(recorder_settings(call, tmp_path, storage=storage, max_duration=600))


async def _finish(
    recorder: Recorder, task: asyncio.Task[RecordingResult], s3: LocalS3, tmp_path: Path
) -> RecordingResult:
    """Stop, then check the stored object is the whole recording and plays."""
    recorder.stop()
    result = await asyncio.wait_for(task, 120)
    assert result.exit_code == ExitCode.OK, result.error
    assert result.upload is not None and result.upload.parts >= 2
    body = s3.client().get_object(Bucket=s3.bucket, Key=result.upload.object_key)["Body"].read()
    assert len(body) == result.upload.size
    local = tmp_path / "got.mp4"
    local.write_bytes(body)
    duration = float(ffprobe(local)["format"]["duration"])
    assert duration >= result.media.duration - 1.5
    return result


@pytest.mark.timeout(600)
async def test_store_unreachable_for_a_minute(
    call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    """The recording goes on to the spool with an alarm; the upload catches up after."""
    outage = float(os.environ.get("BOT_FAULTS_OUTAGE_SECONDS", "60"))
    recorder = _recorder(call, s3, proxy, tmp_path)
    with captured() as events:
        task = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 60)
        await wait_until(lambda: _upload_open(tmp_path), 30, "the upload opened")
        proxy.cut()
        cut = time.monotonic()
        before = _status(recorder)
        # No part is due for about 40 s (``PART``), so the alarm comes from the uploader's
        # probe: within ``probe_interval`` (15 s) and botocore's retries.
        alarm_after = await wait_until(lambda: _status(recorder)["upload_alarm"], 45, "alarm")
        error = _status(recorder)["last_error"] or ""
        assert "cannot reach the object store" in error and "check the upload" in error, error
        # The store stays down for ``outage`` seconds, and until a full part waits for it.
        await asyncio.sleep(max(0.0, cut + outage - time.monotonic()))  # the outage's length
        await wait_until(lambda: _lag(recorder) > PART, 240, "a part waiting for the store")
        assert _status(recorder)["upload_alarm"], "the alarm must stay up while the store is down"
        during = _status(recorder)
        down = time.monotonic() - cut
        assert during["bytes_uploaded"] == before["bytes_uploaded"]
        proxy.restore()
        catch_up = await wait_until(
            lambda: not _status(recorder)["upload_alarm"] and _lag(recorder) < PART,
            60,
            "catch-up after the outage",
        )
        result = await _finish(recorder, task, s3, tmp_path)
    assert {a["kind"] for a in events.names("storage_alarm")} == {"unreachable"}
    assert events.names("storage_alarm_cleared")
    print(
        f"\n[store down {down:.0f} s] alarm {alarm_after:.1f} s after the cut; backlog "
        f"{during['bytes_recorded'] - during['bytes_uploaded']} B; caught up "
        f"{catch_up:.1f} s after the store came back; {result.upload.parts} parts, "  # type: ignore[union-attr]
        f"{result.media.duration:.1f} s recorded"
    )


async def test_store_slower_than_the_recording(
    call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    """A throttled store (below the recording's byte rate): the lag grows, nothing is
    lost, the upload catches up once the store is fast again."""
    rate = 48 * 1024
    proxy.rate = rate
    recorder = _recorder(call, s3, proxy, tmp_path)
    task = asyncio.create_task(recorder.run())
    await asyncio.wait_for(recorder.started.wait(), 60)
    await wait_until(lambda: _lag(recorder) > PART + 512 * 1024, 90, "a part and more waiting")
    first = _lag(recorder)
    await wait_until(lambda: _lag(recorder) > first + 512 * 1024, 30, "the lag growing")
    peak = _lag(recorder)
    assert _status(recorder)["bytes_uploaded"] < PART  # part 1 still crawling through
    proxy.rate = None
    catch_up = await wait_until(lambda: _lag(recorder) < PART, 60, "catch-up after throttling")
    result = await _finish(recorder, task, s3, tmp_path)
    print(
        f"\n[store throttled to {rate // 1024} KB/s] lag grew to {peak} B; caught up "
        f"{catch_up:.1f} s after the throttle was lifted; {result.upload.parts} parts"  # type: ignore[union-attr]
    )


async def test_credentials_rejected_mid_recording(
    call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, tmp_path: Path
) -> None:
    """The endpoint answers but no longer knows the recorder's key (revoked, or a wrong
    account): an alarm that names the credentials, retries, and a complete object once
    they work again."""
    recorder = _recorder(call, s3, proxy, tmp_path)
    with captured() as events:
        task = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 60)
        await wait_until(lambda: _upload_open(tmp_path), 30, "the upload opened")
        async with LocalS3() as stranger:
            port = urlsplit(stranger.endpoint_url).port
            assert port is not None
            home = proxy.target
            proxy.redirect(("127.0.0.1", port))
            alarm_after = await wait_until(
                lambda: _status(recorder)["upload_alarm"], 90, "upload alarm"
            )
            named_after = alarm_after + await wait_until(
                lambda: "rejected the credentials" in (_status(recorder)["last_error"] or ""),
                60,
                "the alarm naming the credentials",
            )
            assert "check the upload" in (_status(recorder)["last_error"] or "")  # the probe
            # Refused until a full part waits: the catch-up then has parts to upload.
            await wait_until(lambda: _lag(recorder) > PART, 240, "a part waiting")
            assert _status(recorder)["upload_alarm"]
            assert _status(recorder)["bytes_uploaded"] == 0
            proxy.redirect(home)
            back = time.monotonic()
            await wait_until(
                lambda: not _status(recorder)["upload_alarm"] and _lag(recorder) < PART,
                60,
                "catch-up after the credentials came back",
            )
            catch_up = time.monotonic() - back
        result = await _finish(recorder, task, s3, tmp_path)
    assert "credentials" in {a["kind"] for a in events.names("storage_alarm")}
    print(
        f"\n[credentials rejected] alarm {alarm_after:.1f} s after the switch, naming the "
        f"credentials after {named_after:.1f} s; caught up "
        f"{catch_up:.1f} s after they worked again; {result.upload.parts} parts"  # type: ignore[union-attr]
    )


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
    # Seen once in CI and once alone: 149 s recorded, stopped for the disk limit (not at
    # the 120-s max duration) with one limit event. Cause not found; the events say more.
    sequence = [
        (e["event"], e.get("bytes_spooled"), e.get("duration_s"), e.get("state"))
        for e in events.seen
        if not e["event"].startswith("storage_part")
    ]
    assert over < 512 * 1024, ("only the fragment being written when the limit hit", sequence)


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
