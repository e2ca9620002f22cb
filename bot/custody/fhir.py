"""The FHIR R4 ``DocumentReference`` stored next to a recording as ``<object key>.fhir.json``.

It is what a clinical record system (an IHE MHD/XDS registry, an EHR's document index)
takes in to file the recording: what it is, whose, which encounter, who made it, where
the bytes are and how to check them. Written from the manifest of a verified object, so
it never describes bytes that were not checked in storage.

**DocumentReference, not Media.** R5 removed ``Media`` and folded it into
``DocumentReference`` (which it now defines as covering "a photo, video, or audio
recording"), so an R4 ``Media`` would be migrated away by the next version; document
registries (IHE MHD, XDS on FHIR) index ``DocumentReference`` and nothing else; and a
``DocumentReference`` carries several contents, which the manifest and its signature
need.

**R4, as FHIR JSON.** The resource is built as plain JSON and then parsed by the
``fhir.resources`` R4B model (R4B changed nothing in ``DocumentReference`` or the types
used here), so any structural error fails here, not in a registry; what is written is
the JSON built, never a library's re-serialisation.

Where each thing goes, and why:

- ``type``/``category``: configurable codings (``FhirSettings``); the default is LOINC
  11488-4 "Consult note", the document-ontology code for the record of a consultation,
  which LOINC says covers telemedicine visits. LOINC has no code for "a recording" as
  such: that this one is video is said by ``contentType``.
- ``subject``, ``context.encounter``: opaque references the orchestrator supplies,
  checked as relative ``Type/id`` (``bot.config.fhir_reference``); never resolved here.
- ``author``: the recorder, as a contained ``Device`` (``#recorder``) with its version.
- participants: R4 ``DocumentReference`` has no participant element, and the core
  extension for a role (``event-performerFunction``) is not allowed on it in R4. So a
  contained ``CareTeam`` (``#participants``) lists them, each with ``role`` (the
  manifest's role) and ``member`` as a logical reference (``identifier`` = the opaque
  id): core elements only, roles machine-readable, no names. ``context.related`` points
  to it, as "related resources" is what that element is for.
- ``context.period``: when the consultation was recorded.
- ``content[0]``: the recording: ``video/mp4``, url (the object key, or the configured
  template), ``size``, ``hash`` (FHIR's: base64 of the SHA-1 of the bytes), ``creation``
  (the start), ``title``, format ``urn:ihe:iti:xds:2017:mimeTypeSufficient``. Duration
  has no R4 element: it goes in R5's ``Attachment.duration`` through the standard
  cross-version extension (decimal seconds). R4's ``size`` is an ``unsignedInt``
  (< 2 GiB); a larger object (hours of video) states its size through R5's
  ``Attachment.size`` extension instead, as a string, the R4 form of R5's integer64.
- ``content[1]``, ``content[2]``: the manifest and, only when signed, its detached JWS
  signature: each a content of this document rather than a ``relatesTo`` (which links
  whole documents, each needing a DocumentReference of its own). A registry that takes
  one content takes the first, the recording.
- ``masterIdentifier`` and ``identifier``: the recording id; ``date``: when the object
  was verified, the moment this record could first be true.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import ValidationError

from bot.config import ConfigError, FhirSettings, fhir_reference
from bot.manifest import Manifest, StorageRecord

CONTENT_TYPE: Final = "application/fhir+json"
"""Of the resource itself, as stored beside the recording."""
RECORDING_CONTENT_TYPE: Final = "video/mp4"
MANIFEST_CONTENT_TYPE: Final = "application/json"
SIGNATURE_CONTENT_TYPE: Final = "application/jose"
SIGNATURE_TITLE: Final = "Manifest signature (detached JWS)"
DURATION_EXTENSION: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Attachment.duration"
)
SIZE_EXTENSION: Final = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Attachment.size"
UNSIGNED_INT_MAX: Final = 2**31 - 1
"""The largest R4 ``unsignedInt``: the most ``Attachment.size`` can say."""
MIME_TYPE_SUFFICIENT: Final = {
    "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
    "display": "mimeType Sufficient",
}
CONFIDENTIALITY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
RECORDER: Final = "recorder"
PARTICIPANTS: Final = "participants"
_SHA1_HEX = re.compile(r"^[0-9a-f]{40}$")


def fhir_hash(sha1_hex: str) -> str:
    """``Attachment.hash`` as FHIR R4 defines it: base64 of the SHA-1 of the data."""
    value = sha1_hex.lower()
    if not _SHA1_HEX.match(value):
        raise ValueError("object_sha1 must be a SHA-1 digest: 40 hex digits")
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def document_reference(
    manifest: Manifest,
    settings: FhirSettings,
    *,
    manifest_key: str,
    object_sha1: str | None = None,
    signature_key: str | None = None,
    bucket: str | None = None,
    subject: str | None = None,
    encounter: str | None = None,
) -> bytes:
    """The DocumentReference of a verified recording, as FHIR JSON bytes, validated.

    ``object_sha1`` (hex) defaults to the manifest's; ``signature_key`` only when signed;
    ``subject``/``encounter`` given for this recording replace the configured ones. Raises
    ``ConfigError`` for a reference or URL template that cannot be used, ``ValueError``
    for a manifest that does not describe a verified object.
    """
    storage = manifest.storage
    if storage is None:
        raise ValueError("the manifest has no storage block: the object is not verified yet")
    sha1 = object_sha1 if object_sha1 is not None else storage.sha1
    if sha1 is None:
        raise ValueError("no SHA-1 of the object: pass object_sha1 (FHIR's hash is SHA-1)")
    subject, encounter = _references(settings, subject, encounter)
    bucket = bucket if bucket is not None else storage.bucket

    def url(key: str) -> str:
        return _url(settings.url_template, key=key, bucket=bucket)

    recording = _recording(manifest, storage, fhir_hash(sha1), url(storage.object_key))
    related = [(MANIFEST_CONTENT_TYPE, manifest_key, "Recording manifest")]
    if signature_key is not None:
        related.append((SIGNATURE_CONTENT_TYPE, signature_key, SIGNATURE_TITLE))
    content = [{"attachment": recording, "format": MIME_TYPE_SUFFICIENT}] + [
        {"attachment": {"contentType": kind, "url": url(key), "title": title}}
        for kind, key, title in related
    ]
    context, contained = _context(manifest, settings, subject, encounter)
    identifier = _identifier(manifest.recording_id, settings.identifier_system)
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "contained": contained,
        "masterIdentifier": identifier,
        "identifier": [{"use": "official", **identifier}],
        "status": "current",
        "docStatus": "final",
    }
    resource.update(_classification(settings))
    if subject is not None:
        resource["subject"] = {"reference": subject}
    resource["date"] = _datetime(storage.verification.verified_at)
    resource["author"] = [{"reference": f"#{RECORDER}"}]
    if settings.confidentiality is not None:
        coding = {"system": CONFIDENTIALITY_SYSTEM, "code": settings.confidentiality}
        resource["securityLabel"] = [{"coding": [coding]}]
    resource["content"] = content
    resource["context"] = context
    validate(resource)
    return json.dumps(resource, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def _recording(manifest: Manifest, storage: StorageRecord, hash_: str, url: str) -> dict[str, Any]:
    """The recording's attachment; duration, and a size beyond R4's, by R5 extensions."""
    recording: dict[str, Any] = {
        "contentType": RECORDING_CONTENT_TYPE,
        "url": url,
        "hash": hash_,
        "title": "Consultation recording",
        "creation": _datetime(manifest.started_at),
    }
    extensions: list[dict[str, Any]] = []
    if manifest.duration_seconds is not None:
        seconds = round(manifest.duration_seconds, 3)
        extensions.append({"url": DURATION_EXTENSION, "valueDecimal": seconds})
    if storage.size <= UNSIGNED_INT_MAX:
        recording["size"] = storage.size
    else:
        extensions.append({"url": SIZE_EXTENSION, "valueString": str(storage.size)})
    return {"extension": extensions, **recording} if extensions else recording


def _context(
    manifest: Manifest, settings: FhirSettings, subject: str | None, encounter: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``context`` (encounter, period, participants) and the resources it refers to."""
    contained: list[dict[str, Any]] = [_device(manifest.recorder_version)]
    context: dict[str, Any] = {}
    if encounter is not None:
        context["encounter"] = [{"reference": encounter}]
    period = {"start": _datetime(manifest.started_at)}
    if manifest.ended_at is not None:
        period["end"] = _datetime(manifest.ended_at)
    context["period"] = period
    if manifest.participants:
        contained.append(_participants(manifest, settings, subject, period))
        context["related"] = [{"reference": f"#{PARTICIPANTS}"}]
    return context, contained


def _references(
    settings: FhirSettings, subject: str | None, encounter: str | None
) -> tuple[str | None, str | None]:
    """This recording's subject and encounter, else the configured ones."""
    subject = _reference(subject, "subject", ("Patient", "Practitioner", "Group", "Device"))
    encounter = _reference(encounter, "encounter", ("Encounter", "EpisodeOfCare"))
    return subject or settings.subject, encounter or settings.encounter


def _classification(settings: FhirSettings) -> dict[str, Any]:
    """``type`` and, when configured, ``category``."""
    found: dict[str, Any] = {
        "type": _concept(settings.type_system, settings.type_code, settings.type_display)
    }
    if settings.category_code is not None:
        found["category"] = [
            _concept(settings.category_system, settings.category_code, settings.category_display)
        ]
    return found


def validate(resource: dict[str, Any]) -> DocumentReference:
    """Parse with the maintained R4(B) model: a structural error fails here, named."""
    try:
        return DocumentReference.model_validate(resource)
    except ValidationError as exc:
        raise ValueError(f"not a valid FHIR R4 DocumentReference: {exc}") from exc


def _reference(value: str | None, what: str, types: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    try:
        return fhir_reference(value, what=what, types=types)
    except ValueError as exc:
        raise ConfigError(f"{exc} (as passed for this recording)") from None


def _url(template: str | None, *, key: str, bucket: str | None) -> str:
    """The object's address as the record should give it: its key, or the template's URL."""
    if template is None:
        return key
    if "{bucket}" in template and not bucket:
        raise ConfigError(
            "fhir.url_template uses {bucket} but the recording has no bucket "
            "(local storage); drop {bucket} or set storage.bucket"
        )
    return template.format(key=key, bucket=bucket or "")


def _datetime(value: datetime) -> str:
    """FHIR ``dateTime``/``instant`` in UTC (``Z``), fraction only when there is one."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _identifier(recording_id: str, system: str | None) -> dict[str, str]:
    """The recording id under the configured system, or as a URN when it is a UUID."""
    if system is not None:
        return {"system": system, "value": recording_id}
    try:
        return {"system": "urn:ietf:rfc:3986", "value": uuid.UUID(hex=recording_id).urn}
    except ValueError:
        return {"value": recording_id}


def _device(version: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": RECORDER,
        "deviceName": [{"name": "consultation-recorder", "type": "manufacturer-name"}],
        "type": {"text": "Consultation recorder (software)"},
        "version": [{"value": version}],
    }


def _participants(
    manifest: Manifest, settings: FhirSettings, subject: str | None, period: dict[str, str]
) -> dict[str, Any]:
    """Who took part, by role: opaque ids as logical references, never a name."""
    members = []
    for participant in manifest.participants:
        identifier = {"value": participant.id}
        if settings.participant_system is not None:
            identifier = {"system": settings.participant_system, **identifier}
        members.append({"role": [{"text": participant.role}], "member": {"identifier": identifier}})
    team: dict[str, Any] = {
        "resourceType": "CareTeam",
        "id": PARTICIPANTS,
        "status": "inactive",
        "name": "Consultation participants",
    }
    if subject is not None and subject.startswith(("Patient/", "Group/")):
        team["subject"] = {"reference": subject}
    team["period"] = period
    team["participant"] = members
    return team
