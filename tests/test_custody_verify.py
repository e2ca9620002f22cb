"""``bot verify`` on a real signed recording, and on each way of tampering with it.

One two-party recording is made (local SFU, real aiortc peers, local store), signed
with the test clinic's key. Every case copies it, changes one thing as a forger or an
accident would, and runs ``bot verify`` the way a third party does: it must fail with
exit code 7 and name what is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from testbed.s3 import LocalS3
from testbed.stack import start_local_sfu

from bot.cli import main
from bot.config import CustodySettings
from bot.custody.signing import load_signer, thumbprint
from bot.exitcodes import ExitCode
from bot.recording import RecordingResult, record
from bot.storage import audit_key, manifest_key, signature_key
from bot.storage.boxes import top_level_boxes
from tests.e2e import CLINIC_KEY, bot_verify, clinic_public_key, recorder_settings

Tamper = Callable[[Path], None]


async def _record(output_dir: Path) -> RecordingResult:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p1")
        return await record(recorder_settings(call, output_dir, max_duration=4.0))
    finally:
        await call.close()


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    result = asyncio.run(_record(tmp_path_factory.mktemp("signed")))
    assert result.exit_code == ExitCode.OK and result.path is not None, result.error
    yield result.path


@pytest.fixture
def copy(original: Path, tmp_path: Path) -> Path:
    """The record's files, copied: the object and everything beside it."""
    media = tmp_path / original.name
    for path in original.parent.glob(original.name + "*"):
        shutil.copy(path, tmp_path / path.name)
    return media


def _verify(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    key = clinic_public_key(tmp_path)
    code = main(["verify", str(media), "--public-key", str(key), "--json"])
    return code, capsys.readouterr().out


def _failed(out: str) -> dict[str, str]:
    verdict = json.loads(out)
    return {c["name"]: c["detail"] for c in verdict["checks"] if not c["ok"]}


def _edit_json(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    data = json.loads(path.read_bytes())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def test_the_untouched_record_verifies(copy: Path, tmp_path: Path) -> None:
    done = bot_verify(copy, public_key_dir=tmp_path)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"VERIFIED: {copy}"


def _middle_fragment(media: Path) -> tuple[int, int]:
    """Byte range of a moof+mdat pair in the middle of the object."""
    boxes = list(top_level_boxes(media))
    moofs = [i for i, box in enumerate(boxes) if box.kind == b"moof"]
    first = moofs[len(moofs) // 2]
    return boxes[first].start, boxes[first + 1].end


def _flip_byte(media: Path) -> None:
    data = bytearray(media.read_bytes())
    data[len(data) // 2] ^= 0x40
    media.write_bytes(bytes(data))


def _remove_fragment(media: Path) -> None:
    start, end = _middle_fragment(media)
    data = media.read_bytes()
    media.write_bytes(data[:start] + data[end:])


def _truncate(media: Path) -> None:
    data = media.read_bytes()
    media.write_bytes(data[: len(data) - 5000])


def _audit_lines(media: Path) -> list[bytes]:
    return Path(audit_key(str(media))).read_bytes().splitlines()


def _edit_audit_line(media: Path) -> None:
    lines = _audit_lines(media)
    middle = json.loads(lines[len(lines) // 2])
    middle["actor"] = "someone-else"
    lines[len(lines) // 2] = json.dumps(middle).encode()
    Path(audit_key(str(media))).write_bytes(b"\n".join(lines) + b"\n")


def _remove_audit_line(media: Path) -> None:
    lines = _audit_lines(media)
    del lines[len(lines) // 2]
    Path(audit_key(str(media))).write_bytes(b"\n".join(lines) + b"\n")


def _cut_audit_tail(media: Path) -> None:
    Path(audit_key(str(media))).write_bytes(b"\n".join(_audit_lines(media)[:-1]) + b"\n")


def _edit_manifest(media: Path) -> None:
    def longer(manifest: dict[str, object]) -> None:
        manifest["duration_seconds"] = 3600.0

    _edit_json(Path(manifest_key(str(media))), longer)


def _resign_with(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> Tamper:
    def resign(media: Path) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        signer = load_signer(CustodySettings(signing_key=pem, key_id=kid))
        assert signer is not None
        body = Path(manifest_key(str(media))).read_bytes()
        Path(signature_key(str(media))).write_bytes(signer.sign(body))

    return resign


CLINIC_KID = thumbprint(CLINIC_KEY.public_key())


@pytest.mark.parametrize(
    ("tamper", "check", "says"),
    [
        (_flip_byte, "fragments", "differs from what was written"),
        (_remove_fragment, "fragments", "differs from what was written"),
        (_truncate, "fragments", "is cut short: the object ends at byte"),
        (_edit_audit_line, "audit trail", "a line before it was edited or removed"),
        (_remove_audit_line, "audit trail", "a line before it was edited or removed"),
        (_cut_audit_tail, "audit trail", "the trail was cut short"),
        (_edit_manifest, "signature", "the manifest was changed after signing"),
        (
            _resign_with(ed25519.Ed25519PrivateKey.generate(), CLINIC_KID),
            "signature",
            "another key signed it",
        ),
        (
            _resign_with(ec.generate_private_key(ec.SECP256R1()), "forger"),
            "signature",
            "signed with key 'forger', which is not among the keys given",
        ),
    ],
    ids=[
        "flipped-byte",
        "removed-fragment",
        "truncated",
        "edited-audit-line",
        "removed-audit-line",
        "audit-tail-cut",
        "manifest-edited-after-signing",
        "other-key-same-kid",
        "other-key",
    ],
)
def test_tampering_is_caught_and_named(  # noqa: PLR0917 (fixtures and parameters)
    copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Tamper,
    check: str,
    says: str,
) -> None:
    tamper(copy)
    code, out = _verify(copy, tmp_path, capsys)
    assert code == ExitCode.NOT_VERIFIED
    failed = _failed(out)
    assert check in failed, failed
    assert says in failed[check], failed


def test_a_changed_object_also_fails_its_hash(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _remove_fragment(copy)
    code, out = _verify(copy, tmp_path, capsys)
    failed = _failed(out)
    assert code == ExitCode.NOT_VERIFIED
    assert failed["object"].endswith(
        "the manifest says "
        + str(json.loads(Path(manifest_key(str(copy))).read_bytes())["storage"]["size"])
    )


def test_a_signed_record_without_a_key_to_check_is_not_verified(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(copy), "--json"]) == ExitCode.NOT_VERIFIED
    assert "no public key given" in _failed(capsys.readouterr().out)["signature"]


def test_a_missing_signature_file_is_named(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path(signature_key(str(copy))).unlink()
    code, out = _verify(copy, tmp_path, capsys)
    assert code == ExitCode.NOT_VERIFIED
    assert _failed(out) == {"signature": "the manifest says it is signed; no signature beside it"}


async def test_an_sse_c_record_in_the_bucket_verifies(s3: LocalS3, tmp_path: Path) -> None:
    """Recorded into SeaweedFS under the clinic's SSE-C key; verified from the bucket by a
    separate ``bot verify`` process that has the store settings and the key, nothing else."""
    sse_c_key = base64.b64encode(os.urandom(32)).decode()
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        storage = s3.storage_settings(spool_dir=tmp_path / "spool", sse_c_key=sse_c_key)
        result = await record(recorder_settings(call, tmp_path, storage=storage, max_duration=3.0))
    finally:
        await call.close()
    assert result.exit_code == ExitCode.OK and result.upload is not None, result.error
    manifest = result.upload.manifest
    assert manifest.storage is not None and manifest.storage.encryption == "sse-c"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(s3.storage_env(), BOT_STORAGE_SSE_C_KEY=sse_c_key)
    key = result.upload.object_key
    done = await asyncio.to_thread(
        bot_verify, key, "--from-store", public_key_dir=tmp_path, env=env
    )
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    env.pop("BOT_STORAGE_SSE_C_KEY")
    without = await asyncio.to_thread(
        bot_verify, key, "--from-store", public_key_dir=tmp_path, env=env
    )
    assert without.returncode == ExitCode.CONFIG, without.stdout + without.stderr
    assert "cannot read the record" in without.stderr
