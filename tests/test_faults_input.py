"""Bad input, property-based: the API models and the config never fail in an unplanned way.

Any JSON a Cloudflare response might carry either validates into a model that round-trips,
or raises pydantic's ``ValidationError`` (which the client turns into a clear error); any
TOML or environment value either validates or raises ``ConfigError`` naming the key; any
key template either is refused or renders keys under its own prefix.
"""

from __future__ import annotations

import contextlib
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from bot.config import ConfigError, Participant, Settings, StorageSettings, load_settings
from bot.realtime import models
from bot.storage.keys import key_prefix, object_key_for

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)

RESPONSES: list[type[BaseModel]] = [
    models.NewSessionResponse,
    models.TracksResponse,
    models.SessionState,
    models.EmptyResponse,
    models.TrackResult,
    models.SessionDescription,
]

FIELD_NAMES = sorted(
    {name for model in RESPONSES for name in model.model_fields}
    | {"sdp", "type", "trackName", "errorCode", "status"}
)


def _object_like() -> st.SearchStrategy[dict[str, Any]]:
    """Mostly the real field names, with any values: reaches deep into the models."""
    return st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), JSON, max_size=6)


@pytest.mark.parametrize("model", RESPONSES, ids=lambda m: m.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON | _object_like())
def test_api_models_accept_or_reject_any_json_and_round_trip(
    model: type[BaseModel], body: Any
) -> None:
    try:
        parsed = model.model_validate(body)
    except ValidationError:
        return
    again = model.model_validate_json(parsed.model_dump_json())
    assert again == parsed


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_api_models_reject_any_bytes_with_a_validation_error(raw: bytes) -> None:
    with contextlib.suppress(ValidationError):
        models.TracksResponse.model_validate_json(raw)


@settings(max_examples=100, deadline=None)
@given(
    tracks=st.lists(
        st.builds(
            models.TrackResult,
            trackName=st.text(max_size=10) | st.none(),
            mid=st.text(max_size=4) | st.none(),
            errorCode=st.sampled_from([None, "not_found_track_error", "empty_track_error"]),
        ),
        max_size=5,
    ),
    renegotiate=st.booleans(),
)
def test_tracks_response_round_trips(tracks: list[models.TrackResult], renegotiate: bool) -> None:
    response = models.TracksResponse(requiresImmediateRenegotiation=renegotiate, tracks=tracks)
    again = models.TracksResponse.model_validate_json(response.model_dump_json())
    assert again == response
    assert [t.failed for t in again.tracks] == [bool(t.errorCode) for t in tracks]


SECTIONS = {name: field.annotation for name, field in Settings.model_fields.items()}
KEYS = sorted(
    (section, key)
    for section, model in SECTIONS.items()
    for key in model.model_fields  # type: ignore[union-attr]
)
TOML_VALUES = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _check_config(section: str, key: str, load: Any) -> None:
    try:
        load()
    except ConfigError as exc:
        message = str(exc)
        assert f"{section}.{key}" in message or f"[{section}]" in message, message
        assert "Traceback" not in message


@settings(max_examples=300, deadline=None)
@given(where=st.sampled_from(KEYS), value=TOML_VALUES)
def test_any_config_value_validates_or_names_the_key(where: tuple[str, str], value: Any) -> None:
    section, key = where
    _check_config(section, key, lambda: load_settings(env={}, overrides={section: {key: value}}))


@settings(max_examples=300, deadline=None)
@given(where=st.sampled_from(KEYS), text=st.text(max_size=40))
def test_any_environment_value_validates_or_names_the_key(
    where: tuple[str, str], text: str
) -> None:
    section, key = where
    env = {f"BOT_{section}_{key}".upper(): text}
    _check_config(section, key, lambda: load_settings(env=env))


@settings(max_examples=100, deadline=None)
@given(
    section=st.sampled_from(sorted(SECTIONS)),
    key=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12),
)
def test_unknown_keys_are_refused_by_name(section: str, key: str) -> None:
    model = SECTIONS[section]
    if key in model.model_fields:  # type: ignore[union-attr]
        return
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_settings(env={}, overrides={section: {key: 1}})


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=80))
def test_any_toml_text_loads_or_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_settings(path, env={})
    except ConfigError as exc:
        assert str(path) in str(exc)


@settings(max_examples=300, deadline=None)
@given(
    template=st.text(
        alphabet=string.ascii_letters + string.digits + "/._-{}~%\\: ", max_size=40
    ).map(lambda t: t + "{recording_id}")
    | st.sampled_from(
        [
            "../{recording_id}",
            "a/../../{recording_id}",
            "/abs/{recording_id}",
            "a//{recording_id}",
            "{consultation_id}/../{recording_id}",
            "{recording_id}/..",
            "a/{recording_id.__class__}",
            "a/{0}{recording_id}",
        ]
    )
)
def test_key_templates_never_escape_their_prefix(template: str) -> None:
    try:
        storage = StorageSettings(key_template=template)
    except ValidationError:
        return
    key = object_key_for(
        storage, consultation_id="c-1", recording_id="r1", started_at=datetime.now(UTC)
    )
    assert key.startswith(key_prefix(storage))
    assert not key.startswith("/")
    assert all(part not in ("", ".", "..") for part in key.split("/"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_participant_flag_parses_or_raises_value_error(text: str) -> None:
    try:
        participant = Participant.parse(text)
    except ValueError:
        return
    assert participant.tracks
