"""One recording's chain of custody, from the first fragment to the sealed manifest.

``Evidence`` owns the recording's audit trail, the fragment chain over its MP4 and the
signer. The writer calls ``fragment_written`` after each fragment (the link goes into the
trail, fsync'd, before the uploader sees the bytes); once the object is verified the
storage layer calls ``seal`` with the final manifest, which gets the chain heads and the
signature, and the trail, the signature and the FHIR resource (``bot.custody.fhir``) go
beside it.

After a crash, ``Evidence.resume`` (``bot recover``) reopens the trail, proves that the
spooled file starts with every fragment the trail records, and links what was written
after the last recorded fragment, so a recovered record is sealed like any other.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from bot.config import FhirSettings
from bot.custody.audit import CONTENT_TYPE as AUDIT_CONTENT_TYPE
from bot.custody.audit import RECORDER_ACTOR, RECOVER_ACTOR, AuditLog, TrailHead
from bot.custody.chain import (
    FRAGMENT_EVENT,
    FragmentChain,
    check_fragments,
    fragments_in,
    read_trail,
)
from bot.custody.signing import CONTENT_TYPE as SIGNATURE_CONTENT_TYPE
from bot.custody.signing import Signer
from bot.manifest import Custody, Manifest
from bot.storage import Sealed, Sidecar, audit_key, fhir_key, manifest_key, signature_key

log = structlog.get_logger("bot.custody")


class Evidence:
    """The custody state of one recording; its methods run on whichever thread writes
    (``fragment_written``: the media thread; ``seal``: the upload thread)."""

    def __init__(
        self,
        audit: AuditLog,
        chain: FragmentChain,
        signer: Signer | None,
        fhir: FhirSettings,
        *,
        actor: str = RECORDER_ACTOR,
    ) -> None:
        self.audit = audit
        self.chain = chain
        self._signer = signer
        self._fhir = fhir
        self._actor = actor
        self._sealed: TrailHead | None = None

    @classmethod
    def resume(
        cls, audit: AuditLog, media_path: Path, signer: Signer | None, fhir: FhirSettings
    ) -> Evidence:
        """Continue a crashed recording's evidence (``bot recover``).

        A spool that does not start with the fragments its trail records is still
        uploaded (never lose what was recorded), but the mismatch goes into the trail and
        the chain continues from the last fragment that holds, so ``bot verify`` names it.
        """
        with media_path.open("rb") as media:
            proven = check_fragments(media, fragments_in(read_trail(audit.path)))
        audit.record(
            "recording.recovering",
            actor=RECOVER_ACTOR,
            fragments_proven=proven.links,
            bytes_proven=proven.covered,
            problem=proven.problem,
        )
        if proven.problem is not None:
            log.error("custody.spool_differs_from_trail", problem=proven.problem)
        chain = FragmentChain(media_path, proven)
        evidence = cls(audit, chain, signer, fhir, actor=RECOVER_ACTOR)
        evidence.fragment_written()  # what was written after the last recorded fragment
        return evidence

    def fragment_written(self) -> None:
        """Link the bytes the writer has just appended and put the link in the trail."""
        made = self.chain.advance()
        if made is not None:
            self.audit.record(FRAGMENT_EVENT, actor=self._actor, **made.as_fields())

    def seal(self, manifest: Manifest) -> Sealed:
        """The manifest with the chain heads, signed, and the files that go beside it.

        The trail is sealed on the first call: its last line is the verification the
        manifest reports. A retry (the store failed to take the manifest) signs again
        over the new manifest with the same heads.
        """
        storage = manifest.storage
        assert storage is not None, "sealed only once the object is verified"
        if self._sealed is None:
            self.audit.record(
                "upload.verified",
                actor=self._actor,
                object_key=storage.object_key,
                size=storage.size,
                sha256=storage.sha256,
                parts=len(storage.parts),
                fragments=self.chain.count,
                fragment_chain=self.chain.head,
                verification=storage.verification.model_dump(mode="json"),
            )
            self._sealed = self.audit.seal()
        return self._signed(manifest, storage.object_key, storage.bucket, fhir=True)

    def seal_archive(self, manifest: Manifest, key: str) -> Sealed:
        """The record of a recording kept only as tracks (``recording.mode = "tracks"``):
        no object of its own, so nothing for the fragment chain or a FHIR attachment; the
        signed manifest lists every track object with its SHA-256. ``key``: where the
        record is stored (its manifest goes to ``manifest_key(key)``)."""
        if self._sealed is None:
            self.audit.record(
                "archive.verified",
                actor=self._actor,
                tracks=[{"object_key": t.object_key, "sha256": t.sha256} for t in manifest.archive],
            )
            self._sealed = self.audit.seal()
        return self._signed(manifest, key, None, fhir=False)

    def _signed(self, manifest: Manifest, key: str, bucket: str | None, *, fhir: bool) -> Sealed:
        assert self._sealed is not None
        signer = self._signer
        custody = Custody(
            fragments=self.chain.count,
            fragment_chain=self.chain.head,
            audit_lines=self._sealed.lines,
            audit_head=self._sealed.head,
            signature="jws-detached" if signer else "unsigned",
            signature_alg=signer.algorithm if signer else None,
            key_id=signer.key_id if signer else None,
        )
        final = manifest.model_copy(update={"custody": custody})
        body = final.to_json()
        sidecars = [Sidecar(audit_key(key), self.audit.path.read_bytes(), AUDIT_CONTENT_TYPE)]
        if signer is not None:
            sidecars.append(Sidecar(signature_key(key), signer.sign(body), SIGNATURE_CONTENT_TYPE))
        if fhir and self._fhir.enabled:
            # Loaded only here: the FHIR models cost about 6 MB, which track records
            # and tracks-only records (no FHIR resource) never pay.
            from bot.custody.fhir import CONTENT_TYPE as FHIR_CONTENT_TYPE
            from bot.custody.fhir import document_reference

            resource = document_reference(
                final,
                self._fhir,
                manifest_key=manifest_key(key),
                signature_key=signature_key(key) if signer else None,
                bucket=bucket,
            )
            sidecars.append(Sidecar(fhir_key(key), resource, FHIR_CONTENT_TYPE))
        return Sealed(final, body, tuple(sidecars))
