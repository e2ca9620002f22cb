"""What the chain of custody costs a two-party recording: its share of the recorder's CPU.

Usage: ``.venv/bin/python -m bench.custody_cost [--seconds 60] [--runs 5]``

The recorder records a two-party call (local SFU, two synthetic participants) as in
``bench.compare_recorders``, measured by the kernel as a child process: that is the
whole recorder's CPU per media second, custody included. Then, in this process, its own
MP4 is replayed fragment by fragment into a scratch file, twice per run: once appending
only, once with the recording's evidence (each fragment hashed and linked, its line
rendered, written and fsync'd into an audit trail) and the manifest sealed and signed
with an Ed25519 key at the end. The difference is what custody costs; both replays run
in the same process, alternately, and the median of the runs is reported with its share
of the recorder's figure. CPU is the process's user + system time (the audit writer's
thread included), not wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.measure import machine_summary, median
from bench.runners import Measurement, run_recorder, start_two_party_call
from bot.config import CustodySettings, FhirSettings
from bot.custody.audit import AuditLog
from bot.custody.chain import FragmentChain
from bot.custody.evidence import Evidence
from bot.custody.signing import load_signer
from bot.logs import configure_logging
from bot.manifest import Manifest, StorageRecord, Verification
from bot.storage.boxes import top_level_boxes


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fragments(media: Path) -> Iterator[bytes]:
    """The stretches the writer adds one at a time: the header, then moof + mdat pairs."""
    data = media.read_bytes()
    boxes = top_level_boxes(media)
    start = 0
    for box in boxes:
        if box.kind in (b"mdat", b"moov"):
            yield data[start : box.end]
            start = box.end
    if start < len(data):
        yield data[start:]


def _sealable(size: int) -> Manifest:
    verified = Verification(
        size_ok=True,
        etag="match",
        sha256_method="full-read",
        decode_start_ok=True,
        decode_end_ok=True,
        verified_at=datetime.now(UTC),
        seconds=0.0,
    )
    storage = StorageRecord(
        backend="local",
        object_key="bench/custody.mp4",
        size=size,
        sha256="0" * 64,
        sha1="0" * 40,
        part_size=size,
        parts=(),
        encryption="none",
        verification=verified,
    )
    return Manifest(
        consultation_id="bench",
        recording_id="custody",
        started_at=datetime.now(UTC),
        storage=storage,
    )


def _replay(pieces: list[bytes], scratch: Path, *, custody: bool) -> float:
    """CPU seconds to append every piece (and, with custody, link and seal them)."""
    media, trail = scratch / "replay.mp4", scratch / "replay.audit.jsonl"
    media.unlink(missing_ok=True)
    trail.unlink(missing_ok=True)
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = load_signer(CustodySettings(signing_key=key.decode()))
    audit = AuditLog(trail, "bench", "custody")
    evidence = Evidence(audit, FragmentChain(media), signer, FhirSettings(enabled=False))
    began = _cpu()
    with media.open("ab") as out:
        for piece in pieces:
            out.write(piece)
            out.flush()
            if custody:
                evidence.fragment_written()
    if custody:
        evidence.seal(_sealable(media.stat().st_size))
    spent = _cpu() - began
    asyncio.run(audit.close())
    return spent


@dataclass(frozen=True)
class CustodyCost:
    recorder: Measurement
    fragments: int
    custody_cpu: list[float]
    append_cpu: list[float]

    def report(self) -> str:
        media = self.recorder.media_seconds
        custody = max(0.0, median(self.custody_cpu) - median(self.append_cpu)) / media
        whole = self.recorder.cpu_per_media_second
        return "\n".join(
            [
                machine_summary(),
                f"recording: {media:.1f} media s, {self.fragments} fragments",
                f"recorder (whole, custody included): {whole:.4f} CPU-s per media s",
                f"custody (chain, audit lines + fsync, signature): {custody:.6f} CPU-s per "
                f"media s (median of {len(self.custody_cpu)} replays, minus appending alone)",
                f"custody share of the recorder: {100 * custody / whole:.3f} %",
            ]
        )


async def _record(seconds: float, workdir: Path) -> Measurement:
    call = await start_two_party_call()
    try:
        return await run_recorder(call, workdir / "recorder", seconds)
    finally:
        await call.close()


def measure(seconds: float, runs: int, workdir: Path) -> CustodyCost:
    """Record once, then replay its fragments ``runs`` times each way (outside any event
    loop: the audit trail's close runs its own)."""
    recorder = asyncio.run(_record(seconds, workdir))
    [recording] = sorted((workdir / "recorder" / "out").rglob("*.mp4"))
    pieces = list(_fragments(recording))
    scratch = workdir / "replay"
    scratch.mkdir()
    custody, append = [], []
    for _ in range(runs):
        append.append(_replay(pieces, scratch, custody=False))
        custody.append(_replay(pieces, scratch, custody=True))
    return CustodyCost(recorder, len(pieces), custody, append)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.custody_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="media seconds recorded")
    parser.add_argument("--runs", type=int, default=5, help="replays of each kind")
    args = parser.parse_args(argv)
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-custody-") as tmp:
        print(measure(args.seconds, args.runs, Path(tmp)).report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
