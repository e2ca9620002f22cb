"""SIGKILL the recorder at chosen moments, then `bot recover`: nothing half-written or doubled.

The recorder runs in a child process (the real ``Recorder`` against the local SFU and
synthetic participants, uploading to SeaweedFS through a throttled ``ThrottlingProxy`` so
parts are in flight long enough to be killed in). The test reads the child's JSON log
events and SIGKILLs it right after: a part upload starting, the multipart completion
starting, or a second participant's track pulled mid-recording (a renegotiation). Then
``bot recover`` runs as an operator would, and the bucket is listed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from testbed.proxy import ThrottlingProxy
from testbed.s3 import LocalS3
from testbed.stack import LocalCall

from bot.exitcodes import ExitCode
from bot.manifest import Manifest
from bot.storage import audit_key, fhir_key, manifest_key, signature_key
from bot.storage.spool import Spool
from bot.storage.verify import decode_probe, fragment_layout
from tests.e2e import CLINIC_KEY_PEM, bot_verify
from tests.faults import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import asyncio, json, sys
from pathlib import Path
from bot.config import Participant, Settings
from bot.logs import configure_logging
from bot.recording import Recorder

configure_logging("debug", "json")
spec = json.loads(Path(sys.argv[1]).read_text())
settings = Settings.model_validate(spec["settings"])
late = Participant.model_validate(spec["late"])

async def main() -> None:
    recorder = Recorder(settings)
    task = asyncio.create_task(recorder.run())
    await recorder.started.wait()
    while recorder.status().as_dict()["bytes_recorded"] < spec["late_after_bytes"]:
        await asyncio.sleep(0.2)
    await recorder.add_participant(late)
    await task

asyncio.run(main())
"""


@pytest.fixture
def call(two_party_call: LocalCall) -> LocalCall:
    return two_party_call


@pytest.fixture
def proxy(s3: LocalS3) -> Iterator[ThrottlingProxy]:
    port = urlsplit(s3.endpoint_url).port
    assert port is not None
    with ThrottlingProxy(("127.0.0.1", port), rate=64 * 1024) as p:
        yield p


def _spec(call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, spool: Path) -> dict[str, object]:
    clinician, patient = call.participants
    return {
        "settings": {
            "realtime": {
                "base_url": call.base_url,
                "app_id": call.app_id,
                "app_secret": call.app_secret,
                "ice_servers": [],
            },
            "recording": {
                "consultation_id": "c-crash",
                "layout": ["clinician", "patient"],
                "participants": [clinician.model_dump(mode="json")],
                "max_duration": 300,
            },
            "storage": {
                "backend": "s3",
                "endpoint_url": proxy.url,
                "bucket": s3.bucket,
                "access_key_id": s3.access_key_id,
                "secret_access_key": s3.secret_access_key,
                "spool_dir": str(spool),
                "retry_backoff_max": 1.0,
            },
            "custody": {"signing_key": CLINIC_KEY_PEM},
        },
        "late": patient.model_dump(mode="json"),
        "late_after_bytes": 150_000,
    }


def _env(s3: LocalS3, spool: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONFAULTHANDLER="1",  # SIGABRT prints every thread's stack (``_stacks``)
        BOT_LOGGING_FORMAT="json",
        BOT_STORAGE_SPOOL_DIR=str(spool),
        BOT_CUSTODY_SIGNING_KEY=CLINIC_KEY_PEM,
        **s3.storage_env(),
    )
    return env


async def _bot_recover(s3: LocalS3, spool_dir: Path) -> None:
    """``bot recover`` in its own process, as an operator runs it; it must succeed."""
    recover = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "recover",
        env=_env(s3, spool_dir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(recover.communicate(), 120)
    assert recover.returncode == ExitCode.OK, err.decode()[-2000:]


MOMENT_WITHIN_S = 240.0
"""The recorder must reach the moment (part upload, completion, renegotiation) by then."""


async def _stacks(child: asyncio.subprocess.Process) -> str:
    """Where a recorder that stopped making progress is stuck: its threads' stacks, as
    Python's fault handler prints them when it is aborted."""
    assert child.stderr is not None
    child.send_signal(signal.SIGABRT)
    try:
        rest = (await asyncio.wait_for(child.stderr.read(), 30)).decode(errors="replace")
    except TimeoutError:
        return "(no stacks within 30 s of SIGABRT)"
    lines = rest.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python")), 0)
    return "\n".join(lines[first:])


def _is_moment(event: dict[str, object], moment: str) -> bool:
    name = event.get("event")
    if moment == "part_upload":
        return name == "storage_part_uploading"
    if moment == "completion":
        return name == "storage_completing"
    return name == "subscriber.track_pulled" and event.get("participant") == "p2"


@pytest.mark.parametrize("moment", ["part_upload", "completion", "renegotiation"])
async def test_sigkill_then_recover_leaves_one_complete_verified_object(
    call: LocalCall, s3: LocalS3, proxy: ThrottlingProxy, tmp_path: Path, moment: str
) -> None:
    spool_dir = tmp_path / "spool"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(call, s3, proxy, spool_dir)))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(spec),
        env=_env(s3, spool_dir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stderr is not None
    stopping = False
    try:
        try:
            async with asyncio.timeout(MOMENT_WITHIN_S):
                while True:
                    line = await child.stderr.readline()
                    assert line, f"the recorder exited (code {child.returncode}) before {moment}"
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if _is_moment(event, moment):
                        if moment == "part_upload":  # kill with the part's bytes on the wire
                            sent = proxy.bytes_up
                            await wait_until(
                                lambda s=sent: proxy.bytes_up >= s + 64 * 1024,
                                60,
                                "part on the wire",
                            )
                        child.send_signal(signal.SIGKILL)
                        break
                    late = (
                        event.get("event") == "subscriber.track_pulled"
                        and event.get("participant") == "p2"
                    )
                    if moment != "renegotiation" and late and not stopping:
                        # A recording this short is one (final) part: it is uploaded on stop.
                        if moment == "completion":
                            proxy.rate = None
                        child.send_signal(signal.SIGTERM)
                        stopping = True
        except TimeoutError:
            stacks = await _stacks(child)
            raise AssertionError(
                f"no {moment} within {MOMENT_WITHIN_S:g} s; the recorder's threads:\n{stacks}"
            ) from None
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    [spool] = Spool.scan(spool_dir)
    spooled = spool.media_path.read_bytes()
    layout = fragment_layout(spool.media_path, len(spooled))
    lost = len(spooled) - layout.last_fragment[1]
    fragment = layout.last_fragment[1] - layout.last_fragment[0]
    print(
        f"\nSIGKILL at {moment}: {len(spooled)} B spooled, {lost} B after the last complete "
        f"fragment (last fragment {fragment} B)"
    )

    proxy.rate = None
    await _bot_recover(s3, spool_dir)

    client = s3.client()
    key = spool.info.object_key
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", []))
    beside = [manifest_key(key), audit_key(key), signature_key(key), fhir_key(key)]
    assert listed == sorted([key, *beside]), "one object and its evidence, no other"
    assert not client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads"), "none left open"
    body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert body == spooled, "every spooled byte, exactly once"
    probe = decode_probe(body[: layout.init_end] + body[slice(*layout.last_fragment)])
    assert probe.video_frames > 0, "the last complete fragment decodes"
    manifest = Manifest.from_json(
        client.get_object(Bucket=s3.bucket, Key=manifest_key(key))["Body"].read()
    )
    assert manifest.recovered
    assert manifest.storage is not None and manifest.storage.verification.decode_end_ok
    assert not spool.directory.exists() and not spool.trail_path.exists()
    # The recovered record proves itself, as a third party checks it, from the bucket.
    verified = bot_verify(
        key, "--from-store", public_key_dir=spool_dir.parent, env=_env(s3, spool_dir)
    )
    assert verified.returncode == ExitCode.OK, verified.stdout + verified.stderr
    trail = [
        json.loads(line)
        for line in client.get_object(Bucket=s3.bucket, Key=audit_key(key))["Body"]
        .read()
        .splitlines()
    ]
    assert {"recorder", "recover"} <= {line["actor"] for line in trail}
    assert [line["event"] for line in trail if line["actor"] == "recover"][:1] == [
        "recording.recovering"
    ]
    assert lost <= max(fragment, 1), "at most one fragment's worth is cut short"


_TRACKS_CHILD = """
import asyncio, json, sys
from pathlib import Path
from bot.config import Settings
from bot.logs import configure_logging
from bot.recording import Recorder

configure_logging("info", "json")
settings = Settings.model_validate(json.loads(Path(sys.argv[1]).read_text()))
asyncio.run(Recorder(settings).run())
"""


async def test_sigkill_in_tracks_mode_then_recover_keeps_every_track_to_its_last_cluster(
    call: LocalCall, s3: LocalS3, tmp_path: Path
) -> None:
    """Issue #14: killed while archiving tracks, every track file is stored complete to
    its last cluster, verified, and the recording's record is made from them."""
    spool_dir = tmp_path / "spool"
    settings = {
        "realtime": {
            "base_url": call.base_url,
            "app_id": call.app_id,
            "app_secret": call.app_secret,
            "ice_servers": [],
        },
        "recording": {
            "consultation_id": "c-crash",
            "mode": "tracks",
            "participants": [p.model_dump(mode="json") for p in call.participants],
            "max_duration": 300,
        },
        "storage": s3.storage_settings(spool_dir=spool_dir).model_dump(mode="json"),
        "custody": {"signing_key": CLINIC_KEY_PEM},
    }
    spec = tmp_path / "settings.json"
    spec.write_text(json.dumps(settings))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TRACKS_CHILD, str(spec), env=_env(s3, spool_dir)
    )

    def files() -> list[Path]:
        return sorted(spool_dir.glob("*-t0*/track.*"))

    try:
        # Four tracks, each with a few clusters on disk (video: ~30 KB a second).
        await wait_until(
            lambda: len(files()) == 4 and all(f.stat().st_size > 60_000 for f in files()[1::2]),
            120,
            "four tracks archiving",
        )
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    spooled = {
        spool.info.object_key: spool.media_path.read_bytes() for spool in Spool.scan(spool_dir)
    }
    assert len(spooled) == 4

    await _bot_recover(s3, spool_dir)

    client = s3.client()
    for key, body in spooled.items():
        stored = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert stored == body, "every spooled byte, exactly once"
        local = tmp_path / key.rsplit("/", 1)[-1]
        local.write_bytes(stored)
        layout = fragment_layout(local, len(stored), keyframe_pieces=False)
        assert len(stored) - layout.complete_end < 200_000, "at most the last cluster is cut"
        complete = tmp_path / f"complete-{local.name}"
        complete.write_bytes(stored[: layout.complete_end])
        decoded = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(complete), "-f", "null", "-"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert decoded.stderr == "", f"{key}: {decoded.stderr[:500]}"
        manifest = Manifest.from_json(
            client.get_object(Bucket=s3.bucket, Key=manifest_key(key))["Body"].read()
        )
        assert manifest.recovered and manifest.track is not None
        verified = bot_verify(key, "--from-store", public_key_dir=tmp_path, env=_env(s3, spool_dir))
        assert verified.returncode == ExitCode.OK, verified.stdout + verified.stderr
    prefix = next(iter(spooled)).rsplit("/", 1)[0]
    record = Manifest.from_json(
        client.get_object(Bucket=s3.bucket, Key=f"{prefix}/recording.manifest.json")["Body"].read()
    )
    assert record.recovered and len(record.archive) == 4
    assert record.custody is not None and record.custody.signature == "jws-detached"
    assert not list(spool_dir.iterdir()), "no spool, no trail left behind"
