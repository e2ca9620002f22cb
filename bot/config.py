"""Settings: ``config.toml``, then ``BOT_<SECTION>_<KEY>`` environment variables, then flags.

Every setting has a safe default so the file may be empty. Unknown keys are errors, not
warnings: a misspelt ``max_duraton`` silently ignored would record a consultation with
the wrong limit.
"""

from __future__ import annotations

import base64
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "BOT_"

_TRACK_REF = re.compile(r"^(?P<session>[A-Za-z0-9_-]{1,128})/(?P<track>[A-Za-z0-9_.:-]{1,128})$")
OPAQUE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""An id that can appear in object keys, logs and metrics: never a name, 1-64 safe chars."""


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which one and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackRef(_Section):
    """A published track as the app's room state names it: ``SESSION_ID/TRACK_NAME``."""

    session_id: str
    track_name: str

    @classmethod
    def parse(cls, text: str) -> TrackRef:
        match = _TRACK_REF.match(text.strip())
        if match is None:
            raise ValueError(
                f"track reference {text!r} is not SESSION_ID/TRACK_NAME "
                "(letters, digits, '-', '_'; e.g. 3f2a.../cam)"
            )
        return cls(session_id=match["session"], track_name=match["track"])

    def __str__(self) -> str:
        return f"{self.session_id}/{self.track_name}"


Role = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class Participant(_Section):
    """Who a group of tracks belongs to. ``id`` is opaque: never a patient's name."""

    id: str
    role: Role
    tracks: tuple[TrackRef, ...]

    @field_validator("id")
    @classmethod
    def _opaque(cls, value: str) -> str:
        if not OPAQUE_ID.match(value):
            raise ValueError("participant id must be an opaque id: 1-64 of [A-Za-z0-9_-]")
        return value

    @field_validator("tracks", mode="before")
    @classmethod
    def _parse_refs(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(TrackRef.parse(v) if isinstance(v, str) else v for v in value)
        return value

    @classmethod
    def parse(cls, text: str) -> Participant:
        """Parse the ``--participant ID:ROLE=SESSION/TRACK[,SESSION/TRACK...]`` flag."""
        head, sep, refs = text.partition("=")
        pid, colon, role = head.partition(":")
        if not sep or not colon or not refs:
            raise ValueError(
                f"participant {text!r} is not ID:ROLE=SESSION_ID/TRACK[,SESSION_ID/TRACK] "
                "(e.g. p1:clinician=3f2a.../mic,3f2a.../cam)"
            )
        return cls(id=pid, role=role, tracks=tuple(TrackRef.parse(r) for r in refs.split(",")))


class RealtimeSettings(_Section):
    base_url: str = "https://rtc.live.cloudflare.com/v1"
    app_id: str = ""
    app_secret: SecretStr = SecretStr("")
    request_timeout: float = Field(10.0, gt=0)
    max_retries: int = Field(4, ge=0, le=10)
    ice_servers: tuple[str, ...] = ("stun:stun.cloudflare.com:3478",)
    # A path to the SFU that answers no ICE check for this long is rebuilt: a new session
    # pulling the same tracks, the same recording going on.
    transport_dead_after: float = Field(3.0, ge=1.0, le=60.0)

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """From the environment: a comma-separated list; empty means no ICE servers."""
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value


class RecordingSettings(_Section):
    consultation_id: str | None = None
    # "composite": one MP4 of everyone, made live; "tracks": every track stored as it
    # arrived (WebM/fMP4, no decode or encode: a tenth of the CPU), composed later with
    # `bot compose` if ever; "both": the composite and the tracks.
    mode: Literal["composite", "tracks", "both"] = "composite"
    # Roles of the grid's cells and speaker tracks, in order; participants take the first
    # free cell of their role. Empty: the configured participants' roles, or
    # clinician + patient when none are configured (they join through the control API).
    layout: tuple[Role, ...] = ()
    # "grid": equal cells; "speaker": the current speaker large, the others in a strip
    # (switching with hysteresis on the voices' levels, every switch in the manifest).
    layout_mode: Literal["grid", "speaker"] = "grid"
    # "contain": the whole picture, bars where its aspect differs from the cell's;
    # "cover": the cell filled, the picture cropped by that difference.
    fit: Literal["contain", "cover"] = "contain"
    # The participants' expected aspect: the cells are shaped and chosen for it once, so
    # a participant whose picture changes shape mid-call keeps its place.
    participant_aspect: str = Field("16:9", pattern=r"^[1-9][0-9]?:[1-9][0-9]?$")
    width: int = Field(1280, ge=160, le=3840, multiple_of=2)
    height: int = Field(720, ge=120, le=2160, multiple_of=2)
    fps: int = Field(30, ge=5, le=60)
    video_bitrate: int = Field(1_500_000, ge=100_000)
    # x264 speed/quality trade-off; "veryfast" keeps a two-party call well under one core.
    video_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = (
        "veryfast"
    )
    # x264 threads; one costs the least CPU per frame and keeps up with 720p30 (raise it
    # for 1080p or above on a machine with cores to spare).
    encoder_threads: int = Field(1, ge=1, le=16)
    audio_codec: Literal["aac", "opus"] = "aac"
    audio_bitrate: int = Field(96_000, ge=16_000)
    keyframe_seconds: float = Field(1.0, ge=0.5, le=2.0)
    # How far the media thread trails real time, so late packets (retransmissions after
    # loss) still land in place; a recorder is not interactive, so a second costs nothing.
    latency: float = Field(1.0, ge=0.1, le=5.0)
    max_duration: float = Field(4 * 3600, gt=0)
    silence_timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(20.0, gt=0)
    # The simulcast layer (rid) asked for with ``preferredRid``; "" leaves it to the SFU.
    # "a" comes first in Cloudflare's a-z order and a missing rid falls to the next one,
    # so it selects the full-size layer of a/b, f/h/q and h/m/l publishers alike.
    simulcast_layer: str = Field("a", max_length=32, pattern=r"^[A-Za-z0-9_-]*$")
    # Each participant's media enters the record only once their consent is given through
    # the control API (until then: black, silence, gap reason "consent_pending").
    require_consent: bool = False
    # Burned into the picture: each cell's label and state (paused, consent, muted), the
    # wall-clock time and, if shown, the consultation id (bot.media.overlay).
    overlay: bool = True
    # Text per role; a role not listed shows the role itself, so never a name by default.
    labels: dict[Role, Annotated[str, Field(pattern=r"^[A-Za-z0-9 :_./()+-]{1,32}$")]] = {}
    # The clock's IANA time zone ("Europe/Berlin"); "UTC" needs no time zone database.
    clock_zone: str = "UTC"
    show_consultation_id: bool = False
    participants: tuple[Participant, ...] = ()

    def required_consultation_id(self) -> str:
        if self.consultation_id is None:
            raise ConfigError(
                "no consultation id: pass --consultation-id ID (an opaque id, never patient "
                "data) or set BOT_RECORDING_CONSULTATION_ID"
            )
        return self.consultation_id

    @field_validator("consultation_id")
    @classmethod
    def _opaque(cls, value: str | None) -> str | None:
        if value is not None and not OPAQUE_ID.match(value):
            raise ValueError("consultation id must be an opaque id: 1-64 of [A-Za-z0-9_-]")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _label_pairs(cls, value: Any) -> Any:
        """From the environment: ``clinician=Doctor,patient=Patient``."""
        if isinstance(value, str):
            pairs = (item.partition("=") for item in value.split(",") if item.strip())
            return {role.strip(): text.strip() for role, _, text in pairs}
        return value

    @field_validator("clock_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        """Checked at start-up, not at the first frame: a zone missing here is a typo or
        an image without tzdata."""
        from zoneinfo import ZoneInfo

        if value != "UTC":
            try:
                ZoneInfo(value)
            except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
                raise ValueError(
                    f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)"
                ) from None
        return value


class StorageSettings(_Section):
    """Where a recording goes while it is made and once it is verified. Owned by ``bot.storage``.

    The defaults keep everything on local disk (``backend = "local"``); ``backend = "s3"``
    streams the recording to any S3 API (Cloudflare R2, or SeaweedFS in the testbed) as it
    is written. Secrets come best from the environment: ``BOT_STORAGE_SECRET_ACCESS_KEY``,
    ``BOT_STORAGE_SSE_C_KEY``.
    """

    backend: Literal["local", "s3"] = "local"
    # One sub-directory per recording (media, journal, spool metadata); kept until verified.
    spool_dir: Path = Path("spool")
    # Where the "local" backend puts verified recordings: local_dir/<object key>.
    local_dir: Path = Path("recordings")
    # R2: https://<account>.r2.cloudflarestorage.com (empty only for backend = "local").
    endpoint_url: str = ""
    bucket: str = ""
    # R2 wants "auto"; SigV4 signs with whatever is set here.
    region: str = "auto"
    access_key_id: str = ""
    secret_access_key: SecretStr = SecretStr("")
    # Built from opaque ids only, so a key can never carry patient data; placeholders:
    # {consultation_id}, {recording_id}, {date} (UTC YYYY-MM-DD of the start).
    key_template: str = "consultations/{date}/{consultation_id}/{recording_id}.mp4"
    # Every part but the last has exactly this size (R2 rule); >= 5 MiB, <= 5 GiB.
    part_size: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024 * 1024 * 1024)
    # base64 of a 32-byte AES key: enables SSE-C (the clinic holds the key, R2 never stores it).
    sse_c_key: SecretStr = SecretStr("")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    # botocore "standard" retries per request; outages are then ridden out by our own backoff.
    max_attempts: int = Field(3, ge=1, le=10)
    retry_backoff_max: float = Field(30.0, gt=0)
    # While no part is due, one cheap request (ListParts of one part) at least this often,
    # so an outage raises the alarm within about this long, not when the next part is due
    # (a minute or more of media). R2 bills it as a Class A operation: 240 an hour.
    probe_interval: float = Field(15.0, gt=0)
    # After the recording ends, how long to keep retrying a store that is down before giving
    # up (the spool is kept for `bot recover`).
    finish_timeout: float = Field(120.0, gt=0)
    # How the SHA-256 of the stored object is checked: "full" streams the object back and
    # hashes it; "ends" trusts the server's per-part MD5 (sent as Content-MD5, chained into
    # the multipart ETag) over the bytes we hashed locally and only reads the start and end
    # for the decode probe; "auto" is "full" on a loopback endpoint, "ends" elsewhere.
    verify_read: Literal["auto", "full", "ends"] = "auto"
    # `bot recover` aborts this recorder's multipart uploads older than this (and in no
    # journal); R2 itself aborts them after 7 days.
    stale_upload_age: float = Field(24 * 3600.0, gt=0)
    # Lifetime of presigned GET URLs handed out by the demo.
    presign_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    # Disk caps for the spool, which holds the whole recording until it is verified. At
    # either limit the recorder stops cleanly and keeps a playable file; the fragment
    # written while stopping (about keyframe_seconds of media) may pass max_spool_bytes.
    max_spool_bytes: int = Field(16 * 1024**3, ge=1024 * 1024)
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0)

    @field_validator("key_template")
    @classmethod
    def _key_template(cls, value: str) -> str:
        """Refuse templates that could escape their prefix or carry free text."""
        fields = re.findall(r"\{([^{}]*)\}", value)
        unknown = sorted(set(fields) - {"consultation_id", "recording_id", "date"})
        if unknown:
            raise ValueError(
                f"key_template has unknown placeholders {unknown}; "
                "use only {consultation_id}, {recording_id}, {date}"
            )
        if "recording_id" not in fields:
            raise ValueError("key_template must contain {recording_id} so keys are unique")
        literal = re.sub(r"\{[^{}]*\}", "x", value)
        if not re.fullmatch(r"[A-Za-z0-9/_.-]+", literal) or "{" in literal or "}" in literal:
            raise ValueError("key_template may hold only letters, digits, '/', '_', '.', '-'")
        segments = literal.split("/")
        if value.startswith("/") or any(s in ("", ".", "..") for s in segments):
            raise ValueError(
                "key_template must be a relative path: no leading '/', no '//', no '.' or '..'"
            )
        return value

    @field_validator("sse_c_key")
    @classmethod
    def _sse_c_key(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text:
            try:
                raw = base64.b64decode(text, validate=True)
            except ValueError:
                raise ValueError(
                    "sse_c_key must be base64 (e.g. `openssl rand -base64 32`)"
                ) from None
            if len(raw) != 32:
                raise ValueError("sse_c_key must be base64 of exactly 32 bytes (AES-256)")
        return value


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ControlSettings(_Section):
    """The live control API (``bot.control``): where it listens and whom it believes.

    Every call carries a bearer JWT. HS256 verifies with ``jwt_secret`` (best from the
    environment: ``BOT_CONTROL_JWT_SECRET``); RS256 and ES256 with the PEM public key at
    ``jwt_public_key_path``. The keys are flat (``jwt_*``) so each one has an environment
    override.
    """

    enabled: bool = False
    # Loopback by default: the orchestrator runs next to the recorder.
    host: str = "127.0.0.1"
    # 0 picks a free port; the bound URL is logged and exposed by the server.
    port: int = Field(8790, ge=0, le=65535)
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_secret: SecretStr = SecretStr("")
    jwt_public_key_path: Path | None = None
    jwt_audience: str = Field("consultation-recorder", min_length=1)
    # Empty: the issuer is not checked.
    jwt_issuer: str = ""
    # Clock skew allowed on exp, nbf and iat; small, tokens are short-lived.
    jwt_leeway: float = Field(5.0, ge=0, le=120)
    # Longest lifetime (exp - iat, seconds) a token may have been minted with; a token
    # without iat is then refused. 0: not checked (iat not required).
    jwt_max_lifetime: int = Field(3600, ge=0, le=24 * 3600)
    # Each token's jti is accepted for one change (add, drop, pause, resume, stop) only;
    # such calls then need a jti. Reads (status, metrics) are not affected.
    jwt_replay_cache: bool = False
    jwt_consultation_claim: str = Field("consultation_id", min_length=1)
    jwt_role_claim: str = Field("role", min_length=1)
    # /metrics may be scraped without a token (the default) or need one allowed "status".
    metrics_require_auth: bool = False

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> ControlSettings:
        if not self.enabled:
            return self
        if self.jwt_algorithm == "HS256" and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError(
                "control.jwt_secret must hold at least 32 characters for HS256 "
                "(set BOT_CONTROL_JWT_SECRET)"
            )
        if self.jwt_algorithm != "HS256" and self.jwt_public_key_path is None:
            raise ValueError(
                f"control.jwt_public_key_path (a PEM public key) is required for "
                f"{self.jwt_algorithm}"
            )
        return self

    @model_validator(mode="after")
    def _replays_expire(self) -> ControlSettings:
        """The replay cache forgets a token when it expires; without a lifetime cap a token
        could be minted to live, and be remembered, for years."""
        if self.jwt_replay_cache and not self.jwt_max_lifetime:
            raise ValueError("control.jwt_replay_cache needs control.jwt_max_lifetime > 0")
        return self


class WebhookSettings(_Section):
    """Optional notifications (``bot.observe.webhook``) on start, stop, completion and failure.

    Each POST is signed with HMAC-SHA256 over ``<timestamp>.<body>`` using ``secret``
    (best from ``BOT_WEBHOOK_SECRET``) and retried with exponential backoff; a receiver
    that stays down never delays or fails the recording.
    """

    # Empty: no webhook.
    url: str = ""
    secret: SecretStr = SecretStr("")
    timeout: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_initial: float = Field(0.5, gt=0)
    backoff_max: float = Field(30.0, gt=0)
    # How long the recorder waits for pending deliveries before it exits.
    drain_timeout: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _signed(self) -> WebhookSettings:
        if self.url and not self.url.startswith(("https://", "http://")):
            raise ValueError("webhook.url must be an http(s) URL")
        if self.url and len(self.secret.get_secret_value()) < 16:
            raise ValueError(
                "webhook.secret must hold at least 16 characters (set BOT_WEBHOOK_SECRET)"
            )
        return self


class CustodySettings(_Section):
    """The clinic's signature on each manifest (``bot.custody.signing``).

    The private key is PEM (PKCS#8 or OpenSSH): Ed25519 signs as JWS ``EdDSA``, ECDSA
    P-256 as ``ES256``. It comes from ``BOT_CUSTODY_SIGNING_KEY`` or a file (a mounted
    secret), never from a file in the repository, and is never logged. Without a key the
    manifest still seals the hashes and says it is unsigned, unless a signature is
    required.
    """

    signing_key: SecretStr = SecretStr("")
    signing_key_file: Path | None = None
    # Names the key in the signature (JWS ``kid``), so a verifier picks the right public
    # key after a rotation. Empty: the key's RFC 7638 thumbprint.
    key_id: str = Field("", pattern=r"^[A-Za-z0-9_.:-]{0,128}$")
    require_signature: bool = False

    @model_validator(mode="after")
    def _one_key(self) -> CustodySettings:
        if self.signing_key.get_secret_value() and self.signing_key_file is not None:
            raise ValueError("custody: set signing_key or signing_key_file, not both")
        return self


FHIR_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
"""FHIR's ``id`` datatype: what may follow ``Type/`` in a relative reference."""
_FHIR_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_FHIR_CODE = re.compile(r"^\S+( \S+)*$")


def fhir_reference(value: str, *, what: str, types: tuple[str, ...]) -> str:
    """Check a reference the orchestrator supplies: relative ``Type/id`` of an allowed type.

    The value is not echoed: a misplaced name must not reach a log through the error.
    """
    kind, slash, ident = value.partition("/")
    if not slash or kind not in types or not FHIR_ID.match(ident):
        allowed = ", ".join(f"{t}/<id>" for t in types)
        raise ValueError(
            f"{what} must be a relative FHIR reference, one of {allowed} "
            "(<id>: 1-64 of [A-Za-z0-9.-], e.g. Patient/123), not a name or a URL"
        )
    return value


class FhirSettings(_Section):
    """The FHIR R4 ``DocumentReference`` stored as ``<object key>.fhir.json`` (``bot.custody``).

    It files the recording in a clinical record system: what it is (type, category), whose
    it is and which encounter (``subject``, ``encounter``: opaque references the
    orchestrator supplies, e.g. ``Patient/123``, here or per recording), where the object
    is and how to check it. The codes are the deployment's to choose (its registry's
    affinity domain); the defaults are LOINC's generic consultation note.
    """

    enabled: bool = True
    # DocumentReference.type (XDS typeCode). LOINC 11488-4 "Consult note": LOINC has no
    # document code for a recording as such; that it is video says content.contentType.
    type_system: str = "http://loinc.org"
    type_code: str = "11488-4"
    type_display: str = "Consult note"
    # DocumentReference.category (XDS classCode); category_code = "" states none.
    category_system: str = "http://loinc.org"
    category_code: str | None = "11488-4"
    category_display: str = "Consult note"
    # Attachment.url: unset = the object key itself; else a template with {key} and
    # {bucket}, e.g. "https://records.example/r2/{bucket}/{key}".
    url_template: str | None = None
    # Subject: Patient|Practitioner|Group|Device/<id>; encounter: Encounter|EpisodeOfCare/<id>.
    subject: str | None = None
    encounter: str | None = None
    # System of the recording id; unset: "urn:ietf:rfc:3986" with the id as urn:uuid: (the
    # recorder's ids are UUIDs), or no system for an id that is not one.
    identifier_system: str | None = None
    # System of the participants' opaque ids; unset: none stated.
    participant_system: str | None = None
    # securityLabel: HL7 v3 Confidentiality (N normal, R restricted, V very restricted...);
    # unset: none stated, the registry's policy applies.
    confidentiality: Literal["U", "L", "M", "N", "R", "V"] | None = None

    @field_validator(
        "category_code",
        "url_template",
        "subject",
        "encounter",
        "identifier_system",
        "participant_system",
        "confidentiality",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty value (``BOT_FHIR_SUBJECT=``) means unset, as in the file."""
        return None if value == "" else value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        types = ("Patient", "Practitioner", "Group", "Device")
        return None if value is None else fhir_reference(value, what="subject", types=types)

    @field_validator("encounter")
    @classmethod
    def _encounter(cls, value: str | None) -> str | None:
        types = ("Encounter", "EpisodeOfCare")
        return None if value is None else fhir_reference(value, what="encounter", types=types)

    @field_validator("type_system", "category_system", "identifier_system", "participant_system")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not _FHIR_URI.match(value):
            raise ValueError("must be an absolute URI, e.g. http://loinc.org")
        return value

    @field_validator("type_code", "category_code")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        if value is not None and not _FHIR_CODE.match(value):
            raise ValueError("must be a FHIR code: no leading, trailing or double spaces")
        return value

    @field_validator("url_template")
    @classmethod
    def _url_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = re.findall(r"\{([^{}]*)\}", value)
        unknown = sorted(set(fields) - {"key", "bucket"})
        if unknown:
            raise ValueError(
                f"url_template has unknown placeholders {unknown}; use {{key}}, {{bucket}}"
            )
        if "key" not in fields:
            raise ValueError("url_template must contain {key}, or each recording gets one URL")
        return value


class E2eeSettings(_Section):
    """End-to-end encrypted calls (``bot.e2ee``): the recorder joins the call's MLS group
    as a visible member through the control API. Frames it cannot open are never decoded;
    if the media stays unreadable for ``join_timeout`` seconds the recording fails (exit 4)
    instead of filling with black."""

    join_timeout: float = Field(30.0, gt=0)


class Settings(_Section):
    realtime: RealtimeSettings = RealtimeSettings()
    recording: RecordingSettings = RecordingSettings()
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()
    control: ControlSettings = ControlSettings()
    webhook: WebhookSettings = WebhookSettings()
    fhir: FhirSettings = FhirSettings()
    custody: CustodySettings = CustodySettings()
    e2ee: E2eeSettings = E2eeSettings()


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Map ``BOT_REALTIME_APP_SECRET`` to ``{"realtime": {"app_secret": ...}}``.

    Only known section names are accepted so that the first underscore after the section
    separates it from the key, whatever underscores the key itself holds.
    """
    overrides: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in Settings.model_fields:
            if rest.startswith(section + "_"):
                overrides.setdefault(section, {})[rest[len(section) + 1 :]] = value
                break
    return overrides


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        env = ENV_PREFIX + "_".join(str(p) for p in item["loc"][:2]).upper()
        hint = f" (or set {env})" if len(item["loc"]) == 2 else ""
        lines.append(f"{source}: [{where}] {item['msg']}{hint}")
    return "; ".join(lines)


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from the file, the environment and flag overrides, in that order."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file; pass --config PATH") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
