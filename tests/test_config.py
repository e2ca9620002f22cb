from pathlib import Path

import pytest

from bot.config import ConfigError, Participant, TrackRef, load_settings


def test_defaults_need_no_file() -> None:
    settings = load_settings(None, env={})
    assert settings.recording.fps == 30
    assert settings.realtime.base_url.endswith("/v1")


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[realtime]\napp_id = "from-file"\n')
    settings = load_settings(
        path, env={"BOT_REALTIME_APP_ID": "from-env", "BOT_REALTIME_APP_SECRET": "s3cr3t"}
    )
    assert settings.realtime.app_id == "from-env"
    assert settings.realtime.app_secret.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(settings)


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[recording]\nmax_duraton = 5\n")
    with pytest.raises(ConfigError, match=r"recording\.max_duraton"):
        load_settings(path, env={})


def test_participant_flag() -> None:
    p = Participant.parse("p1:clinician=abc123/mic,abc123/cam")
    assert p.role == "clinician"
    assert [str(t) for t in p.tracks] == ["abc123/mic", "abc123/cam"]


@pytest.mark.parametrize("bad", ["nosession", "a/b/c", "/cam", "abc/", "a b/cam"])
def test_malformed_track_reference(bad: str) -> None:
    with pytest.raises(ValueError, match="SESSION_ID/TRACK_NAME"):
        TrackRef.parse(bad)
