"""Streaming upload against a real SeaweedFS: parts while recording, wire rules, verification."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import pytest
from botocore.exceptions import ClientError
from test_storage_fmp4 import Feeder, make_fmp4
from testbed.proxy import ThrottlingProxy
from testbed.s3 import LocalS3

from bot.config import StorageSettings
from bot.manifest import Manifest, ParticipantEntry
from bot.storage import Spool, StorageError, Uploader, manifest_key, object_key_for
from bot.storage.journal import PartRecord
from bot.storage.s3_store import S3Store
from bot.storage.verify import verify_object

MiB = 1024 * 1024
PART = 5 * MiB


@pytest.fixture(scope="module")
def store() -> Iterator[LocalS3]:
    with LocalS3() as s3:
        yield s3


@pytest.fixture(scope="module")
def big_fmp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 12 MiB: two full 5 MiB parts and a tail."""
    return make_fmp4(tmp_path_factory.mktemp("media") / "big.mp4", seconds=16)


def _manifest(spool: Spool) -> Manifest:
    return Manifest(
        consultation_id=spool.info.consultation_id,
        recording_id=spool.info.recording_id,
        participants=(ParticipantEntry(id="p1", role="clinician"),),
        started_at=datetime.now(UTC),
    )


def _spool(settings: StorageSettings, tmp_path: Path, rid: str) -> Spool:
    key = object_key_for(
        settings, consultation_id="c1", recording_id=rid, started_at=datetime.now(UTC)
    )
    return Spool.create(settings.spool_dir, consultation_id="c1", recording_id=rid, object_key=key)


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait on a condition owned by another thread or process (which has no event for it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


class WireLog:
    """Every request boto3 puts on the wire, as (operation, headers) seen by ``before-send``."""

    def __init__(self, client: Any) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
        }
        self.requests.append((operation, headers))


def test_streams_parts_while_recording_and_verifies(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    settings = store.storage_settings(spool_dir=tmp_path / "spool", part_size=PART)
    spool = _spool(settings, tmp_path, "rec-stream")
    s3 = S3Store(settings)
    wire = WireLog(s3.client)
    uploader = Uploader(settings, spool, s3)
    uploader.start()
    feeder = Feeder(big_fmp4, spool.media_path, uploader.poke)
    upload_id_holder: list[str] = []

    feeder.write_until(2 * PART + 1)
    _wait_for(lambda: uploader.status().parts == 2)
    journal = spool.journal()
    assert journal is not None and journal.upload_id is not None
    upload_id_holder.append(journal.upload_id)
    # Still recording: the store already holds the full parts, each exactly part_size.
    listed = store.client().list_parts(
        Bucket=store.bucket, Key=spool.info.object_key, UploadId=journal.upload_id
    )["Parts"]
    assert [p["Size"] for p in listed] == [PART, PART]
    assert feeder.chunks, "the recording must still be going on"

    feeder.write_all()
    result = uploader.finish(_manifest(spool))

    client = store.client()
    body = client.get_object(Bucket=store.bucket, Key=result.object_key)["Body"].read()
    assert body == feeder.data
    with av.open(io.BytesIO(body)) as container:
        kinds = sorted(s.type for s in container.streams)
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == ["audio", "video"]
    assert frames == 16 * 25
    manifest = Manifest.from_json(
        client.get_object(Bucket=store.bucket, Key=manifest_key(result.object_key))["Body"].read()
    )
    assert manifest.storage is not None
    assert manifest.storage.sha256 == hashlib.sha256(feeder.data).hexdigest()
    assert manifest.storage.size == len(feeder.data)
    assert [p.size for p in manifest.storage.parts[:-1]] == [PART, PART]
    assert manifest.storage.verification.etag == "match"
    assert manifest.storage.encryption == "none"
    head = client.head_object(Bucket=store.bucket, Key=result.object_key)
    assert head["ContentType"] == "video/mp4"
    assert head["Metadata"] == {
        "recorder-version": manifest.recorder_version,
        "recording-id": "rec-stream",
    }
    assert not spool.directory.exists()

    operations = [op for op, _ in wire.requests]
    assert operations.count("UploadPart") == 3
    assert "ListParts" in operations
    assert operations.index("ListParts", operations.index("UploadPart")) < operations.index(
        "CompleteMultipartUpload"
    )
    for operation, headers in wire.requests:
        assert "x-amz-trailer" not in headers, operation
        assert "aws-chunked" not in headers.get("content-encoding", ""), operation
        assert not any(h.startswith("x-amz-checksum-") for h in headers), operation
        if operation == "UploadPart":
            assert "content-md5" in headers


def test_sse_c_object_unreadable_without_key(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    key = os.urandom(32)
    settings = store.storage_settings(
        spool_dir=tmp_path / "spool", part_size=PART, sse_c_key=base64.b64encode(key).decode()
    )
    spool = _spool(settings, tmp_path, "rec-ssec")
    s3 = S3Store(settings)
    wire = WireLog(s3.client)
    uploader = Uploader(settings, spool, s3)
    uploader.start()
    Feeder(big_fmp4, spool.media_path, uploader.poke).write_all()
    result = uploader.finish(_manifest(spool))
    assert result.manifest.storage is not None
    assert result.manifest.storage.encryption == "sse-c"

    client = store.client()
    with pytest.raises(ClientError):
        client.get_object(Bucket=store.bucket, Key=result.object_key)["Body"].read()
    with pytest.raises(ClientError):
        client.get_object(
            Bucket=store.bucket,
            Key=result.object_key,
            SSECustomerAlgorithm="AES256",
            SSECustomerKey=os.urandom(32),
        )["Body"].read()
    body = client.get_object(
        Bucket=store.bucket,
        Key=result.object_key,
        SSECustomerAlgorithm="AES256",
        SSECustomerKey=key,
    )["Body"].read()
    assert body == big_fmp4.read_bytes()
    keyed = {
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "HeadObject",
        "GetObject",
    }
    assert keyed <= {op for op, _ in wire.requests}
    for operation, headers in wire.requests:
        if operation in keyed:
            assert headers.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", (
                operation
            )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("credentials", r"rejected the credentials .*BOT_STORAGE_SECRET_ACCESS_KEY"),
        ("bucket", r"bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1:\d+; create it"),
        ("unreachable", r"cannot reach the object store at http://127\.0\.0\.1:\d+ .*endpoint_url"),
    ],
)
def test_store_errors_are_one_clear_line_and_keep_the_spool(
    store: LocalS3, big_fmp4: Path, tmp_path: Path, case: str, expected: str
) -> None:
    overrides: dict[str, Any] = {
        "spool_dir": tmp_path / "spool",
        "part_size": PART,
        "finish_timeout": 1.0,
        "max_attempts": 1,
        "connect_timeout": 0.5,
    }
    if case == "credentials":
        overrides["secret_access_key"] = "wrong"
    elif case == "bucket":
        overrides["bucket"] = "no-such-bucket"
    else:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        overrides["endpoint_url"] = f"http://127.0.0.1:{port}"
    settings = store.storage_settings(**overrides)
    spool = _spool(settings, tmp_path, f"rec-{case}")
    uploader = Uploader(settings, spool, S3Store(settings))
    uploader.start()
    Feeder(big_fmp4, spool.media_path, uploader.poke).write_all()
    with pytest.raises(StorageError, match=expected) as info:
        uploader.finish(_manifest(spool))
    assert "\n" not in str(info.value)
    assert settings.secret_access_key.get_secret_value() not in str(info.value)
    assert spool.media_path.read_bytes() == big_fmp4.read_bytes()
    status = uploader.status()
    assert status.alarms >= 1 and status.last_error is not None
    assert status.bytes_uploaded == 0


def test_outage_alarmed_while_no_part_is_due(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    """The store goes away between parts: the probe raises the alarm long before a part is
    due, keeps it up while the store stays away, and only an answer clears it."""
    port = urlsplit(store.endpoint_url).port
    assert port is not None
    with ThrottlingProxy(("127.0.0.1", port)) as proxy:
        settings = store.storage_settings(
            endpoint_url=proxy.url,
            spool_dir=tmp_path / "spool",
            part_size=PART,
            probe_interval=0.5,
            retry_backoff_max=0.5,
            connect_timeout=0.5,
            max_attempts=1,
        )
        spool = _spool(settings, tmp_path, "rec-probe")
        uploader = Uploader(settings, spool, S3Store(settings))
        uploader.start()
        feeder = Feeder(big_fmp4, spool.media_path, uploader.poke)
        feeder.write_until(MiB)  # well under a part: no upload is due
        _wait_for(lambda: spool.journal() is not None)
        proxy.cut()
        _wait_for(lambda: uploader.status().alarm)
        status = uploader.status()
        assert "cannot reach the object store" in (status.last_error or "")
        assert status.parts == 0
        errors = status.errors
        _wait_for(lambda: uploader.status().errors >= errors + 2)  # probed again, still down
        assert uploader.status().alarm
        proxy.restore()
        _wait_for(lambda: not uploader.status().alarm)
        assert uploader.status().alarms == 1
        feeder.write_all()
        result = uploader.finish(_manifest(spool))
    body = store.client().get_object(Bucket=store.bucket, Key=result.object_key)["Body"].read()
    assert body == feeder.data


def test_local_backend_same_path(big_fmp4: Path, tmp_path: Path) -> None:
    settings = StorageSettings(
        backend="local", spool_dir=tmp_path / "spool", local_dir=tmp_path / "out", part_size=PART
    )
    spool = _spool(settings, tmp_path, "rec-local")
    from bot.storage import open_uploader

    uploader = open_uploader(settings, spool)
    uploader.start()
    Feeder(big_fmp4, spool.media_path, uploader.poke).write_all()
    result = uploader.finish(_manifest(spool))
    stored = tmp_path / "out" / result.object_key
    assert stored.read_bytes() == big_fmp4.read_bytes()
    manifest = Manifest.from_json((tmp_path / "out" / result.manifest_key).read_bytes())
    assert manifest.storage is not None and manifest.storage.backend == "local"
    assert manifest.storage.verification.sha256_method == "full-read"
    assert not spool.directory.exists()
    assert not any((tmp_path / "out" / ".uploads").iterdir())


def test_ends_mode_proves_bytes_by_part_md5_chain(
    store: LocalS3, big_fmp4: Path, tmp_path: Path
) -> None:
    settings = store.storage_settings(
        spool_dir=tmp_path / "spool", part_size=PART, verify_read="ends"
    )
    spool = _spool(settings, tmp_path, "rec-ends")
    uploader = Uploader(settings, spool, S3Store(settings))
    uploader.start()
    Feeder(big_fmp4, spool.media_path, uploader.poke).write_all()
    result = uploader.finish(_manifest(spool))
    assert result.manifest.storage is not None
    verification = result.manifest.storage.verification
    assert verification.sha256_method == "part-md5-chain"
    assert verification.etag == "match"


@pytest.mark.parametrize("full_read", [True, False])
def test_verification_catches_a_different_object(
    store: LocalS3, big_fmp4: Path, tmp_path: Path, full_read: bool
) -> None:
    data = big_fmp4.read_bytes()
    tampered = bytearray(data)
    tampered[PART + 10] ^= 0xFF  # one bit in the middle, away from the probed start and end
    key = f"tampered/{full_read}.mp4"
    store.client().put_object(Bucket=store.bucket, Key=key, Body=bytes(tampered))
    parts = []
    for number, offset in enumerate(range(0, len(data), PART), 1):
        chunk = data[offset : offset + PART]
        md5 = hashlib.md5(chunk).hexdigest()
        parts.append(PartRecord(number=number, size=len(chunk), etag=md5, md5=md5))
    with pytest.raises(StorageError) as info:
        verify_object(
            S3Store(store.storage_settings()),
            key,
            media_path=big_fmp4,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            parts=parts,
            full_read=full_read,
        )
    assert info.value.kind == "integrity"
