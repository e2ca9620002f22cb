"""The audit trail: appended lines with who/what/when, redaction, concurrency, and the
hash chain that makes an edited, removed or torn line show."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path

import pytest

from bot.custody.audit import AuditLog
from bot.custody.chain import GENESIS, check_trail, line_hash, read_trail
from bot.observe.uploads import follow_uploads
from bot.storage import UploadStatus
from bot.storage.spool import trail_path


def _status(parts: int, uploaded: int, *, alarm: bool = False) -> UploadStatus:
    fields = {f.name: 0 for f in dataclasses.fields(UploadStatus)}
    fields.update(state="uploading", parts=parts, bytes_uploaded=uploaded, alarm=alarm)
    fields.update(lag_seconds=0.0, last_error=None)
    return UploadStatus(**fields)  # type: ignore[arg-type]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_each_line_says_when_who_what(tmp_path: Path) -> None:
    path = trail_path(tmp_path / "spool", "r1")
    audit = AuditLog(path, "c1", "r1")
    audit.record("recording.paused", actor="clin-1", role="clinician")
    audit.record("upload.verified", size=10, app_secret="s3cr3t")
    await audit.close()
    first, second = _lines(path)
    assert list(first)[:6] == ["time", "seq", "consultation_id", "recording_id", "actor", "event"]
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


async def test_each_line_carries_the_hash_of_the_one_before(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", "c1", "r1")
    for n in range(3):
        audit.record("upload.parts_stored", parts=n)
    head = await asyncio.to_thread(audit.seal)
    raw = read_trail(audit.path)
    lines = [json.loads(line) for line in raw]
    assert [line["seq"] for line in lines] == [0, 1, 2]
    assert [line["prev"] for line in lines] == [GENESIS, line_hash(raw[0]), line_hash(raw[1])]
    assert (head.lines, head.head) == (3, line_hash(raw[2]))
    check = check_trail(raw)
    assert check.problem is None and (check.links, check.head) == (3, head.head)
    audit.record("status.read")  # after the seal: refused, never written
    await audit.close()
    assert len(read_trail(audit.path)) == 3


async def test_a_reopened_trail_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    for n in range(2):
        audit = AuditLog(path, "c1", "r1")
        audit.record("recorder.started", run=n)
        await audit.close()
    with path.open("ab") as torn:  # a crash in the middle of a write
        torn.write(b'{"time": "2026-')
    audit = AuditLog(path, "c1", "r1")
    audit.record("recording.recovering", actor="recover")
    await audit.close()
    raw = read_trail(path)
    assert len(raw) == 4 and json.loads(raw[3])["prev"] == line_hash(raw[2])
    assert check_trail(raw[:2]).problem is None
    assert check_trail(raw).problem == "audit line 3 is not JSON (torn or edited)"


def _edit(raw: list[bytes], index: int, **changes: object) -> list[bytes]:
    line = json.loads(raw[index])
    line.update(changes)
    return [*raw[:index], json.dumps(line).encode(), *raw[index + 1 :]]


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda raw: _edit(raw, 1, actor="someone-else"), "audit line 3 does not follow line 2"),
        (lambda raw: raw[:1] + raw[2:], "audit line 2 does not follow line 1"),
        (lambda raw: raw[1:], "audit line 1 does not follow line 0"),
        (lambda raw: [raw[0], raw[2], raw[1], *raw[3:]], "audit line 2 does not follow line 1"),
    ],
    ids=["edited", "removed", "first-removed", "reordered"],
)
async def test_tampering_breaks_the_chain_where_it_happened(
    tmp_path: Path, tamper: object, problem: str
) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", "c1", "r1")
    for n in range(4):
        audit.record("upload.parts_stored", parts=n)
    await audit.close()
    raw = read_trail(audit.path)
    assert check_trail(raw).problem is None
    check = check_trail(tamper(raw))  # type: ignore[operator]
    assert check.problem is not None and check.problem.startswith(problem)
