"""Faults against a real SeaweedFS: the store goes away mid-recording; the recorder is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_storage_fmp4 import Feeder, make_fmp4
from test_storage_s3 import PART, _manifest, _spool, _wait_for
from testbed.s3 import LocalS3

from bot.config import Settings
from bot.exitcodes import ExitCode
from bot.manifest import Manifest
from bot.recording.recovery import recover_all
from bot.storage import Spool, Uploader, manifest_key
from bot.storage.journal import Journal
from bot.storage.s3_store import S3Store
from bot.storage.verify import decode_probe, fragment_layout


@pytest.fixture(scope="module")
def store() -> Iterator[LocalS3]:
    with LocalS3() as s3:
        yield s3


@pytest.fixture(scope="module")
def big_fmp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fmp4(tmp_path_factory.mktemp("media") / "big.mp4", seconds=16)


def test_store_outage_mid_recording_then_complete(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    settings = store.storage_settings(
        spool_dir=tmp_path / "spool", part_size=PART, retry_backoff_max=0.5, max_attempts=1
    )
    spool = _spool(settings, tmp_path, "rec-outage")
    uploader = Uploader(settings, spool, S3Store(settings))
    uploader.start()
    feeder = Feeder(big_fmp4, spool.media_path, uploader.poke)
    feeder.write_until(PART + 1)
    _wait_for(lambda: uploader.status().parts == 1)

    store.pause()
    try:
        feeder.write_until(2 * PART + 1)  # the recording goes on while the store is away
        _wait_for(lambda: uploader.status().alarm)
        status = uploader.status()
        assert status.parts == 1
        assert status.lag_bytes >= PART
        assert spool.media_path.stat().st_size == feeder.written
    finally:
        store.resume()
    _wait_for(lambda: uploader.status().parts == 2 and not uploader.status().alarm)
    feeder.write_all()
    result = uploader.finish(_manifest(spool))

    body = store.client().get_object(Bucket=store.bucket, Key=result.object_key)["Body"].read()
    assert body == feeder.data
    assert uploader.status().alarms == 1


_CHILD = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from test_storage_fmp4 import Feeder
from bot.config import StorageSettings
from bot.logs import configure_logging
from bot.storage import Spool, object_key_for, open_uploader

configure_logging("warning", "json")  # logs to stderr; stdout is the test's channel
settings = StorageSettings.model_validate_json(Path(sys.argv[1]).read_text())
source = Path(sys.argv[2])
key = object_key_for(settings, consultation_id="c1", recording_id="rec-killed",
                     started_at=datetime.now(UTC))
spool = Spool.create(settings.spool_dir, consultation_id="c1", recording_id="rec-killed",
                     object_key=key)
uploader = open_uploader(settings, spool)
uploader.start()
feeder = Feeder(source, spool.media_path, uploader.poke)
feeder.write_until(2 * settings.part_size + 1)
deadline = time.monotonic() + 30
while uploader.status().parts < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
# Half of the next fragment: the writer dies in the middle of it.
with spool.media_path.open("ab") as out:
    out.write(feeder.chunks[0][: len(feeder.chunks[0]) // 2])
print("parts", uploader.status().parts, flush=True)
sys.stdin.read()
"""


def test_sigkilled_recorder_is_recovered(store: LocalS3, big_fmp4: Path, tmp_path: Path) -> None:
    settings = store.storage_settings(
        spool_dir=tmp_path / "spool", part_size=PART, stale_upload_age=0.001
    )
    settings_file = tmp_path / "storage.json"
    data = json.loads(settings.model_dump_json())
    data["secret_access_key"] = settings.secret_access_key.get_secret_value()
    settings_file.write_text(json.dumps(data))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(settings_file), str(big_fmp4)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.strip() == "parts 2", line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)

    spool = Spool.scan(settings.spool_dir)[0]
    spooled = spool.media_path.read_bytes()
    journal = Journal.load(spool.journal_path)
    assert journal is not None and len(journal.parts) == 2
    # Lose the journal entry of part 2 as if the crash came before its fsync:
    # ListParts is the authority and the part must not be uploaded twice.
    journal.parts = journal.parts[:1]
    journal.save(spool.journal_path)
    client = store.client()
    stray = client.create_multipart_upload(Bucket=store.bucket, Key="consultations/stray.mp4")

    code = asyncio.run(recover_all(Settings(storage=settings)))

    assert code == ExitCode.OK
    key = spool.info.object_key
    body = client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    assert body == spooled
    layout = fragment_layout(big_fmp4, big_fmp4.stat().st_size)
    assert len(body) > 2 * PART
    # Every complete fragment is there and the last one decodes.
    source = big_fmp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(body)
    recovered = fragment_layout(cut, len(body))
    assert body[: recovered.last_fragment[1]] == source[: recovered.last_fragment[1]]
    assert recovered.last_fragment[1] <= layout.last_fragment[1]
    probe = decode_probe(body[: recovered.init_end] + body[slice(*recovered.last_fragment)])
    assert probe.video_frames > 0
    manifest = Manifest.from_json(
        client.get_object(Bucket=store.bucket, Key=manifest_key(key))["Body"].read()
    )
    assert manifest.recovered
    assert manifest.storage is not None and manifest.storage.size == len(spooled)
    assert not spool.directory.exists()
    uploads = client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert stray["UploadId"] not in {u["UploadId"] for u in uploads}


def test_recover_leaves_live_spools_alone(store: LocalS3, tmp_path: Path) -> None:
    settings = store.storage_settings(spool_dir=tmp_path / "spool", part_size=PART)
    live = Spool.create(
        settings.spool_dir, consultation_id="c1", recording_id="rec-live", object_key="k/x.mp4"
    )
    live.media_path.write_bytes(b"still recording")
    assert asyncio.run(recover_all(Settings(storage=settings))) == ExitCode.OK
    assert live.media_path.read_bytes() == b"still recording"


def test_abandoned_upload_is_resumed_by_recover(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    settings = store.storage_settings(spool_dir=tmp_path / "spool", part_size=PART)
    spool = _spool(settings, tmp_path, "rec-abandoned")
    uploader = Uploader(settings, spool, S3Store(settings))
    uploader.start()
    feeder = Feeder(big_fmp4, spool.media_path, uploader.poke)
    feeder.write_until(PART + 1)
    _wait_for(lambda: uploader.status().parts == 1)
    uploader.abandon()
    feeder.write_all()
    spool.save_manifest_draft(_manifest(spool))

    assert asyncio.run(recover_all(Settings(storage=settings))) == ExitCode.OK

    client = store.client()
    body = client.get_object(Bucket=store.bucket, Key=spool.info.object_key)["Body"].read()
    assert body == feeder.data
    manifest = Manifest.from_json(
        client.get_object(Bucket=store.bucket, Key=manifest_key(spool.info.object_key))[
            "Body"
        ].read()
    )
    assert manifest.recovered
    assert manifest.participants[0].role == "clinician"


def test_upload_lost_by_the_store_is_started_again(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    settings = store.storage_settings(
        spool_dir=tmp_path / "spool", part_size=PART, retry_backoff_max=0.2
    )
    spool = _spool(settings, tmp_path, "rec-lost")
    uploader = Uploader(settings, spool, S3Store(settings))
    uploader.start()
    feeder = Feeder(big_fmp4, spool.media_path, uploader.poke)
    feeder.write_until(PART + 1)
    _wait_for(lambda: uploader.status().parts == 1)
    journal = spool.journal()
    assert journal is not None and journal.upload_id is not None
    store.client().abort_multipart_upload(
        Bucket=store.bucket, Key=spool.info.object_key, UploadId=journal.upload_id
    )
    feeder.write_all()
    result = uploader.finish(_manifest(spool))
    body = store.client().get_object(Bucket=store.bucket, Key=result.object_key)["Body"].read()
    assert body == feeder.data
    assert uploader.status().alarms == 1
