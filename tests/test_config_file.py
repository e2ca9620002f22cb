"""config.toml documents every setting, and parses to the defaults."""

from pathlib import Path

from bot.config import Settings, load_settings

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
SECRETS = {
    "app_secret",
    "secret_access_key",
    "sse_c_key",
    "jwt_secret",
    "secret",
    "signing_key",
}
OPTIONAL = {"consultation_id", "participants", "jwt_public_key_path", "signing_key_file"}
OPTIONAL |= {"url_template", "subject", "encounter", "identifier_system", "participant_system"}
OPTIONAL |= {"confidentiality"}


def test_config_toml_loads_to_the_defaults() -> None:
    assert load_settings(CONFIG, env={}) == Settings()


def test_config_toml_names_every_key() -> None:
    text = CONFIG.read_text()
    for section, model in Settings.model_fields.items():
        assert f"[{section}]" in text
        assert model.annotation is not None
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            if key in SECRETS or key in OPTIONAL:
                assert key in text, f"{section}.{key} is not mentioned in config.toml"
            else:
                assert f"\n{key} = " in text, f"{section}.{key} is missing from config.toml"
