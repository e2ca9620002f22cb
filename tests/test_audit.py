"""The audit trail: appended lines with who/what/when, redaction, concurrency, upload."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path

from bot.config import StorageSettings
from bot.observe.audit import AuditLog, audit_key, audit_path, follow_uploads, upload_audit
from bot.storage import UploadStatus


def _status(parts: int, uploaded: int, *, alarm: bool = False) -> UploadStatus:
    fields = {f.name: 0 for f in dataclasses.fields(UploadStatus)}
    fields.update(state="uploading", parts=parts, bytes_uploaded=uploaded, alarm=alarm)
    fields.update(lag_seconds=0.0, last_error=None)
    return UploadStatus(**fields)  # type: ignore[arg-type]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_each_line_says_when_who_what(tmp_path: Path) -> None:
    path = audit_path(tmp_path / "spool", "r1")
    audit = AuditLog(path, "c1", "r1")
    audit.record("recording.paused", actor="clin-1", role="clinician")
    audit.record("upload.verified", size=10, app_secret="s3cr3t")
    await audit.close()
    first, second = _lines(path)
    assert list(first)[:5] == ["time", "consultation_id", "recording_id", "actor", "event"]
    assert first["actor"] == "clin-1" and first["event"] == "recording.paused"
    assert str(first["time"]).endswith("+00:00")
    assert second["actor"] == "recorder" and second["app_secret"] == "[redacted]"
    assert "s3cr3t" not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600


async def test_appends_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.audit.jsonl"
    for n in range(2):
        audit = AuditLog(path, "c1", "r1")
        audit.record("recorder.started", run=n)
        await audit.close()
    assert [line["run"] for line in _lines(path)] == [0, 1]


async def test_threads_never_interleave_lines(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", "c1", "r1")

    def burst(name: str) -> None:
        for i in range(200):
            audit.record("upload.parts_stored", actor=name, parts=i)

    threads = [threading.Thread(target=burst, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    await audit.flush()
    lines = _lines(audit.path)
    assert len(lines) == 800
    for n in range(4):
        assert [line["parts"] for line in lines if line["actor"] == f"t{n}"] == list(range(200))
    await audit.close()
    audit.record("late")  # dropped after close, not raised
    assert len(_lines(audit.path)) == 800


async def test_follow_uploads_audits_parts_and_outages(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", "c1", "r1")
    states = [
        None,
        _status(0, 0),
        _status(1, 8),
        _status(1, 8, alarm=True),
        _status(3, 24),
    ]
    done = asyncio.Event()

    def status() -> UploadStatus | None:
        if len(states) == 1:
            done.set()
        return states.pop(0) if len(states) > 1 else states[0]

    task = asyncio.create_task(follow_uploads(audit, status, interval=0.001))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    await audit.flush()
    assert [(e["event"], e.get("parts")) for e in _lines(audit.path)] == [
        ("upload.parts_stored", 1),
        ("upload.store_failing", None),
        ("upload.parts_stored", 3),
        ("upload.store_recovered", None),
    ]
    await audit.close()


async def test_upload_next_to_the_recording_then_removed(tmp_path: Path) -> None:
    settings = StorageSettings(spool_dir=tmp_path / "spool", local_dir=tmp_path / "store")
    path = audit_path(settings.spool_dir, "r1")
    audit = AuditLog(path, "c1", "r1")
    audit.record("recorder.started")
    await audit.close()
    key = await asyncio.to_thread(upload_audit, settings, "consultations/c1/r1.mp4", path)
    assert key == audit_key("consultations/c1/r1.mp4") == "consultations/c1/r1.mp4.audit.jsonl"
    assert _lines(settings.local_dir / key)[0]["event"] == "recorder.started"
    assert not path.exists()
