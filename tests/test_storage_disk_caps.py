"""The spool's disk caps: the spool checks them, the uploader enforces them while the
recording grows, and ``Uploader.status()`` only reads. Fast: a real spool and the local
store in tmp_path, no store process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from test_storage_fmp4 import make_fmp4
from test_storage_s3 import _manifest, _spool, _wait_for

from bot.config import StorageSettings
from bot.storage import Spool, open_uploader

MiB = 1024 * 1024
ALL_THE_DISK = 2**62
"""A ``min_free_bytes`` no disk can satisfy: the cap is reached at once."""


def _settings(tmp_path: Path, **caps: int) -> StorageSettings:
    return StorageSettings(
        backend="local", spool_dir=tmp_path / "spool", local_dir=tmp_path / "out", **caps
    )


def _limit_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "storage_disk_limit"]


def test_spool_names_the_cap_it_reached(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, consultation_id="c1", recording_id="r1", object_key="r1.mp4")
    spool.media_path.write_bytes(b"\0" * MiB)
    assert spool.disk_limit(max_spool_bytes=2 * MiB, min_free_bytes=0) is None
    full = spool.disk_limit(max_spool_bytes=MiB, min_free_bytes=0)
    assert full is not None and (full.cap, full.bytes_spooled) == ("max_spool_bytes", MiB)
    low = spool.disk_limit(max_spool_bytes=2 * MiB, min_free_bytes=ALL_THE_DISK)
    assert low is not None and low.cap == "min_free_bytes" and low.free_bytes < ALL_THE_DISK


def test_status_only_reads_and_a_poke_latches_the_cap(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_spool_bytes=MiB)
    spool = _spool(settings, tmp_path, "rec-poke")
    spool.media_path.write_bytes(b"\0" * 2 * MiB)  # past the cap, nobody told yet
    with structlog.testing.capture_logs() as logs:
        uploader = open_uploader(settings, spool)
        for _ in range(3):
            status = uploader.status()
            assert status.disk_limit is None
            assert (status.state, status.bytes_spooled) == ("idle", 2 * MiB)
        assert logs == []
        assert not spool.journal_path.exists()

        uploader.poke()  # the writer's "a fragment is on disk"
        assert uploader.status().disk_limit == "max_spool_bytes"
        spool.media_path.write_bytes(b"")
        uploader.poke()
        assert uploader.status().disk_limit == "max_spool_bytes", "once set it stays set"
    [event] = _limit_events(logs)
    assert (event["limit"], event["bytes_spooled"]) == ("max_spool_bytes", 2 * MiB)


@pytest.mark.parametrize(
    ("cap", "caps", "spooled"),
    [
        ("max_spool_bytes", {"max_spool_bytes": MiB}, 2 * MiB),
        ("min_free_bytes", {"min_free_bytes": ALL_THE_DISK}, 0),
    ],
)
def test_upload_worker_latches_the_cap_without_a_poke(
    tmp_path: Path, cap: str, caps: dict[str, int], spooled: int
) -> None:
    settings = _settings(tmp_path, **caps)
    spool = _spool(settings, tmp_path, "rec-worker")
    spool.media_path.write_bytes(b"\0" * spooled)
    with structlog.testing.capture_logs() as logs:
        uploader = open_uploader(settings, spool)
        uploader.start()
        try:
            _wait_for(lambda: uploader.status().disk_limit is not None, timeout=5)
        finally:
            uploader.abandon()
    assert uploader.status().disk_limit == cap
    [event] = _limit_events(logs)
    assert event["limit"] == cap


def test_a_spool_being_finished_is_not_capped(tmp_path: Path) -> None:
    """``bot recover`` finishes spools on a full disk too: no cap, no disk-limit error."""
    settings = _settings(tmp_path, min_free_bytes=ALL_THE_DISK)
    spool = _spool(settings, tmp_path, "rec-finish")
    media = make_fmp4(tmp_path / "small.mp4", seconds=2, bitrate=400_000)
    spool.media_path.write_bytes(media.read_bytes())
    with structlog.testing.capture_logs() as logs:
        result = open_uploader(settings, spool).finish(_manifest(spool))
    assert (tmp_path / "out" / result.object_key).read_bytes() == media.read_bytes()
    assert _limit_events(logs) == []
