"""``bot verify``: a third party's check that a stored record is what was recorded.

Given the object (a local file, or fetched by key), its manifest, the signature, the
audit trail and the FHIR resource stored beside it, and the clinic's public keys, each
property is checked on its own and reported, so a failure names what is wrong:

- **object**: its size and SHA-256 are the manifest's;
- **fragments**: the object is, byte for byte, the fragments the trail says were
  written, in order, each linked into the chain the manifest seals (a flipped byte, a
  removed or a cut fragment is named with its byte range);
- **audit trail**: every line follows the one before, and the last is the one the
  manifest seals (an edited, removed or appended line shows);
- **signature**: the manifest as stored verifies with the key the signature names
  (changed after signing, or signed by another key, shows);
- **media**: every packet of every stream decodes, start to end;
- **FHIR** (when present): its attachment's size and hash are the object's.

The verdict holds only if every check does; an unsigned record fails the signature
check unless the caller accepts unsigned records.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
from av.error import FFmpegError
from pydantic import ValidationError

from bot.custody.chain import check_fragments, check_trail, fragments_in
from bot.custody.signing import SignatureError, VerifyingKey, verify_detached
from bot.manifest import Custody, Manifest
from bot.storage import ObjectStore, audit_key, fhir_key, manifest_key, signature_key

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class StoredEvidence:
    """What is stored beside the object, as bytes; None where a file is absent."""

    manifest: bytes
    signature: bytes | None = None
    trail: bytes | None = None
    fhir: bytes | None = None


@dataclass(frozen=True)
class Verdict:
    subject: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def text(self) -> str:
        """For a person: one line per check, then the verdict."""
        lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<12} {c.detail}" for c in self.checks]
        verdict = "VERIFIED" if self.ok else "NOT VERIFIED"
        failed = [c.name for c in self.checks if not c.ok]
        lines.append(f"{verdict}: {self.subject}" + (f" ({', '.join(failed)})" if failed else ""))
        return "\n".join(lines)


def verify_record(
    media: Path,
    evidence: StoredEvidence,
    keys: list[VerifyingKey],
    *,
    subject: str,
    allow_unsigned: bool = False,
) -> Verdict:
    """Check a record; never raises on bad evidence, which is what it reports."""
    try:
        manifest = Manifest.from_json(evidence.manifest)
    except ValidationError as exc:
        problem = f"the manifest is not a recorder manifest ({exc.error_count()} errors)"
        return Verdict(subject, (Check("manifest", False, problem),))
    custody = manifest.custody
    if manifest.storage is None or custody is None:
        problem = "the manifest has no storage record or no custody section: not a sealed record"
        return Verdict(subject, (Check("manifest", False, problem),))
    checks = [
        _object(media, manifest),
        _fragments(media, evidence.trail, custody, manifest.storage.size),
        _trail(evidence.trail, custody),
        _signature(evidence, custody, keys, allow_unsigned),
        _decodes(media),
    ]
    if evidence.fhir is not None:
        checks.append(_fhir(evidence.fhir, media))
    return Verdict(subject, tuple(checks))


def _object(media: Path, manifest: Manifest) -> Check:
    assert manifest.storage is not None
    size = media.stat().st_size
    sha256 = hashlib.sha256()
    with media.open("rb") as source:
        while chunk := source.read(_READ_CHUNK):
            sha256.update(chunk)
    if size != manifest.storage.size:
        return Check("object", False, f"{size} bytes, the manifest says {manifest.storage.size}")
    if sha256.hexdigest() != manifest.storage.sha256:
        return Check("object", False, "its SHA-256 is not the manifest's: the bytes changed")
    return Check("object", True, f"{size} bytes, SHA-256 {manifest.storage.sha256[:16]}...")


def _fragments(media: Path, trail: bytes | None, custody: Custody, size: int) -> Check:
    if trail is None:
        return Check("fragments", False, "no audit trail: the fragment chain cannot be checked")
    with media.open("rb") as source:
        check = check_fragments(source, fragments_in(trail.splitlines()))
    if check.problem is not None:
        return Check("fragments", False, check.problem)
    if check.covered != size:
        after = size - check.covered
        return Check("fragments", False, f"{after} bytes after the last recorded fragment")
    if (check.links, check.head) != (custody.fragments, custody.fragment_chain):
        return Check(
            "fragments",
            False,
            f"the trail records {check.links} fragments, the manifest seals "
            f"{custody.fragments} with another chain head",
        )
    return Check("fragments", True, f"{check.links} fragments, chain {check.head[:16]}...")


def _trail(trail: bytes | None, custody: Custody) -> Check:
    if trail is None:
        return Check("audit trail", False, "no audit trail beside the object")
    check = check_trail(line for line in trail.split(b"\n") if line)
    if check.problem is not None:
        return Check("audit trail", False, check.problem)
    if check.links != custody.audit_lines:
        return Check(
            "audit trail",
            False,
            f"{check.links} lines, the manifest seals {custody.audit_lines}: the trail was "
            + ("cut short" if check.links < custody.audit_lines else "appended to"),
        )
    if check.head != custody.audit_head:
        return Check("audit trail", False, "its last line is not the one the manifest seals")
    return Check("audit trail", True, f"{check.links} lines, each following the one before")


def _signature(
    evidence: StoredEvidence, custody: Custody, keys: list[VerifyingKey], allow_unsigned: bool
) -> Check:
    if custody.signature == "unsigned":
        detail = "the manifest is unsigned: authorship cannot be proven"
        return Check(
            "signature", allow_unsigned, detail + (" (accepted)" if allow_unsigned else "")
        )
    if evidence.signature is None:
        return Check("signature", False, "the manifest says it is signed; no signature beside it")
    if not keys:
        return Check("signature", False, "no public key given (--public-key) to check it with")
    try:
        key = verify_detached(evidence.signature, evidence.manifest, keys)
    except SignatureError as exc:
        return Check("signature", False, str(exc))
    if (key.key_id, key.algorithm) != (custody.key_id, custody.signature_alg):
        return Check("signature", False, "the signature's key is not the one the manifest names")
    return Check("signature", True, f"{key.algorithm} by key {key.key_id}")


def _decodes(media: Path) -> Check:
    frames: dict[str, int] = {}
    try:
        with av.open(str(media)) as container:
            for packet in container.demux():
                if packet.size == 0:
                    continue
                kind = packet.stream.type
                frames[kind] = frames.get(kind, 0) + len(packet.decode())
    except (FFmpegError, OSError, ValueError) as exc:
        return Check("media", False, f"does not decode: {exc}")
    if not frames.get("video") and not frames.get("audio"):
        return Check("media", False, "no audio or video frame decodes")
    counts = ", ".join(f"{n} {kind} frames" for kind, n in sorted(frames.items()))
    return Check("media", True, f"decodes start to end ({counts})")


def _fhir(resource: bytes, media: Path) -> Check:
    try:
        attachment = json.loads(resource)["content"][0]["attachment"]
        stated_hash, stated_size = attachment["hash"], attachment.get("size")
    except (ValueError, KeyError, IndexError, TypeError):
        return Check("fhir", False, "the DocumentReference has no content attachment hash")
    sha1 = hashlib.sha1(usedforsecurity=False)
    with media.open("rb") as source:
        while chunk := source.read(_READ_CHUNK):
            sha1.update(chunk)
    if base64.b64decode(stated_hash) != sha1.digest():
        return Check("fhir", False, "its attachment hash is not the object's SHA-1")
    if stated_size is not None and stated_size != media.stat().st_size:
        return Check("fhir", False, f"its attachment size {stated_size} is not the object's")
    return Check("fhir", True, "the DocumentReference's attachment hash and size are the object's")


def local_record(
    media: Path,
    *,
    manifest: Path | None = None,
    signature: Path | None = None,
    trail: Path | None = None,
    fhir: Path | None = None,
) -> StoredEvidence:
    """A record on disk; each file defaults to its name beside the object
    (``<file>.manifest.json``, ``.manifest.sig``, ``.audit.jsonl``, ``.fhir.json``)."""
    name = str(media)

    def read(given: Path | None, beside: str) -> bytes | None:
        path = given or Path(beside)
        return path.read_bytes() if path.is_file() else None

    body = read(manifest, manifest_key(name))
    if body is None:
        raise FileNotFoundError(f"no manifest for {media}: give --manifest")
    return StoredEvidence(
        manifest=body,
        signature=read(signature, signature_key(name)),
        trail=read(trail, audit_key(name)),
        fhir=read(fhir, fhir_key(name)),
    )


def fetch_record(store: ObjectStore, key: str, into: Path) -> tuple[Path, StoredEvidence]:
    """Download a stored record (the object into ``into``, the files beside it in
    memory); raises ``FileNotFoundError`` when the object or its manifest is missing."""

    def small(name: str) -> bytes | None:
        if store.head(name) is None:
            return None
        return b"".join(store.iter_object(name))

    if store.head(key) is None:
        raise FileNotFoundError(f"no object {key} in {store.describe(key)}")
    body = small(manifest_key(key))
    if body is None:
        raise FileNotFoundError(f"no manifest beside {key}")
    media = into / Path(key).name
    with media.open("wb") as out:
        for chunk in store.iter_object(key):
            out.write(chunk)
    evidence = StoredEvidence(
        manifest=body,
        signature=small(signature_key(key)),
        trail=small(audit_key(key)),
        fhir=small(fhir_key(key)),
    )
    return media, evidence
