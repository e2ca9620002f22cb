"""Object keys from opaque ids only, so a key can never carry patient data or escape its prefix.

The template itself is checked when the settings load (``StorageSettings.key_template``);
here the ids and the rendered key are checked again, because a key is forever.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from bot.config import OPAQUE_ID, ConfigError, StorageSettings

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")

MANIFEST_SUFFIX = ".manifest.json"
AUDIT_SUFFIX = ".audit.jsonl"
SIGNATURE_SUFFIX = ".manifest.sig"
FHIR_SUFFIX = ".fhir.json"


def object_key_for(
    settings: StorageSettings, *, consultation_id: str, recording_id: str, started_at: datetime
) -> str:
    for name, value in (("consultation_id", consultation_id), ("recording_id", recording_id)):
        if not OPAQUE_ID.match(value):
            raise ConfigError(f"{name} must be an opaque id (1-64 of [A-Za-z0-9_-])")
    if started_at.tzinfo is None:
        raise ConfigError("started_at must be timezone-aware to name the object")
    key = settings.key_template.format(
        consultation_id=consultation_id,
        recording_id=recording_id,
        date=started_at.astimezone(UTC).strftime("%Y-%m-%d"),
    )
    if not _SAFE_KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ConfigError("storage.key_template renders an unsafe key; fix the template")
    return key


def key_prefix(settings: StorageSettings) -> str:
    """The fixed text before the first placeholder: every key this recorder writes starts so."""
    return settings.key_template.split("{", 1)[0]


def manifest_key(object_key: str) -> str:
    return object_key + MANIFEST_SUFFIX


def audit_key(object_key: str) -> str:
    """The audit trail, stored next to the recording like its manifest."""
    return object_key + AUDIT_SUFFIX


def signature_key(object_key: str) -> str:
    """The manifest's detached signature (JWS)."""
    return object_key + SIGNATURE_SUFFIX


def fhir_key(object_key: str) -> str:
    """The FHIR DocumentReference that files the recording in a clinical record."""
    return object_key + FHIR_SUFFIX
