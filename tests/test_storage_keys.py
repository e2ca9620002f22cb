from __future__ import annotations

import base64
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.config import ConfigError, StorageSettings, load_settings
from bot.storage.keys import key_prefix, manifest_key, object_key_for

START = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))


def test_default_template_renders_utc_date_and_ids() -> None:
    key = object_key_for(
        StorageSettings(), consultation_id="c-1", recording_id="r_2", started_at=START
    )
    assert key == "consultations/2026-03-02/c-1/r_2.mp4"
    assert manifest_key(key) == "consultations/2026-03-02/c-1/r_2.mp4.manifest.json"
    assert key.startswith(key_prefix(StorageSettings()))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("../{recording_id}", "relative path"),
        ("/abs/{recording_id}", "relative path"),
        ("a//{recording_id}", "relative path"),
        ("a/./{recording_id}", "relative path"),
        ("{patient_name}/{recording_id}", "unknown placeholders"),
        ("{recording_id!r}", "unknown placeholders"),
        ("a/{date}.mp4", "must contain \\{recording_id\\}"),
        ("a b/{recording_id}", "only letters"),
    ],
)
def test_unsafe_templates_are_config_errors(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"storage\.key_template.*{message}"):
        load_settings(None, env={"BOT_STORAGE_KEY_TEMPLATE": template})


@pytest.mark.parametrize("bad", ["../x", "Jane Doe", "a/b", "x" * 65])
def test_ids_must_be_opaque(bad: str) -> None:
    with pytest.raises(ConfigError, match="opaque id"):
        object_key_for(StorageSettings(), consultation_id=bad, recording_id="r", started_at=START)


def test_naive_start_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        object_key_for(
            StorageSettings(),
            consultation_id="c",
            recording_id="r",
            started_at=datetime(2026, 1, 1),
        )


def test_sse_c_key_from_environment_is_checked_and_hidden() -> None:
    good = base64.b64encode(bytes(range(32))).decode()
    settings = load_settings(None, env={"BOT_STORAGE_SSE_C_KEY": good})
    assert settings.storage.sse_c_key.get_secret_value() == good
    assert good not in repr(settings)
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        load_settings(None, env={"BOT_STORAGE_SSE_C_KEY": base64.b64encode(b"short").decode()})
    with pytest.raises(ConfigError, match="must be base64"):
        load_settings(None, env={"BOT_STORAGE_SSE_C_KEY": "not base64!"})


def test_s3_backend_needs_endpoint_and_bucket() -> None:
    from bot.storage.s3_store import S3Store

    with pytest.raises(ConfigError, match=r"endpoint_url or storage\.bucket"):
        S3Store(StorageSettings(backend="s3"))


def test_a_recorder_writing_to_a_local_folder_never_loads_boto3(tmp_path: Path) -> None:
    """boto3 and a client are 15 MB of a recorder's memory; the S3 backend alone pays."""
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "import bot.cli, bot.recording.recorder, bot.compose.composer\n"
        "from bot.config import StorageSettings\n"
        "from bot.storage.stores import open_store\n"
        "open_store(StorageSettings(backend='local', local_dir=Path(sys.argv[1])))\n"
        "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))\n"
        "open_store(StorageSettings(backend='s3', endpoint_url='http://127.0.0.1:9', bucket='b'))\n"
        "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[]", "['boto3', 'botocore']"]
