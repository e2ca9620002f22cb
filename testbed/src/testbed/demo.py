"""``make demo``: a local SFU, a synthetic clinician and patient, the recorder, and a local
S3-compatible store (SeaweedFS) standing in for R2.

The recording is signed with a demo clinic key made once in the output directory, and
copied back with everything stored beside it, so ``bot verify`` and ``bot inspect`` work
on the local copy."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bot.config import (
    CustodySettings,
    RealtimeSettings,
    RecordingSettings,
    Settings,
    StorageSettings,
)
from bot.inspect.report import summarize
from bot.recording import record
from bot.storage import audit_key, fhir_key, manifest_key, presigned_url, signature_key
from testbed.s3 import LocalS3
from testbed.stack import start_local_sfu


async def run_demo(duration: float, output_dir: Path, storage: str = "s3") -> int:
    work = Path(tempfile.mkdtemp(prefix="bot-demo-"))
    store = LocalS3(data_dir=work / "seaweedfs") if storage == "s3" else None
    if store is not None:
        print("starting the local S3 store (SeaweedFS)...", file=sys.stderr)
        await asyncio.to_thread(store.start)
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="clinician-1")
        await call.publish("patient", 2, participant_id="patient-1")
        storage_settings = (
            store.storage_settings(spool_dir=work / "spool")
            if store is not None
            else StorageSettings(spool_dir=work / "spool", local_dir=output_dir)
        )
        settings = Settings(
            realtime=RealtimeSettings(
                base_url=call.base_url,
                app_id=call.app_id,
                app_secret=call.app_secret,
                ice_servers=(),
            ),
            recording=RecordingSettings(
                consultation_id="demo-consultation",
                participants=tuple(call.participants),
                max_duration=duration,
            ),
            storage=storage_settings,
            custody=CustodySettings(signing_key_file=_demo_key(output_dir)),
        )
        print(f"recording {duration:.0f} s of a synthetic consultation...", file=sys.stderr)
        result = await record(settings)
        await call.close()
        if result.upload is None:
            print(f"demo failed: {result.error}", file=sys.stderr)
            return int(result.exit_code)
        local = result.path
        if store is not None:
            # Fetch the verified object and its evidence back so it can be played and
            # verified after the store is gone.
            local = output_dir / Path(result.upload.object_key).name
            await asyncio.to_thread(_download, store, result.upload.object_key, local)
            print(f"object:    s3://{store.bucket}/{result.upload.object_key} (verified)")
            print(f"manifest:  s3://{store.bucket}/{result.upload.manifest_key}")
            print(f"presigned: {presigned_url(storage_settings, result.upload.object_key)}")
            print("           (valid while the local store runs; it stops with the demo)")
        assert local is not None
        print(f"recording: {local.resolve()}")
        print(summarize(local))
        public = output_dir / PUBLIC_KEY_NAME
        print(f"verify:    bot verify {local} --public-key {public}")
        return int(result.exit_code)
    finally:
        await call.close()
        if store is not None:
            await asyncio.to_thread(store.stop)


PRIVATE_KEY_NAME = "demo-clinic-key.pem"
PUBLIC_KEY_NAME = "demo-clinic-key.pub.pem"


def _demo_key(directory: Path) -> Path:
    """The demo clinic's signing key (made once, owner-only) and its public half."""
    private = directory / PRIVATE_KEY_NAME
    if not private.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private.touch(mode=0o600)
        private.write_bytes(pem)
        (directory / PUBLIC_KEY_NAME).write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return private


def _download(store: LocalS3, key: str, path: Path) -> None:
    """The object and what is stored beside it, under the same names locally."""
    path.parent.mkdir(parents=True, exist_ok=True)
    client = store.client()
    client.download_file(store.bucket, key, str(path))
    for beside in (manifest_key, signature_key, audit_key, fhir_key):
        client.download_file(store.bucket, beside(key), beside(str(path)))
