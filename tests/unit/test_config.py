"""Configuration: every problem is reported with the exact place it is at, the environment overrides
the file, secrets come from the environment, and API keys are kept only as hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from leadline.config import ConfigError, config_from_mapping, load_config

META: dict[str, Any] = {
    "name": "meta-main",
    "provider": "meta",
    "business_number": "+15550001234",
    "phone_number_id": "420000000000002",
    "app_secret": "meta-app-secret",
    "verify_token": "meta-verify-token",
}
TWILIO: dict[str, Any] = {
    "name": "twilio-main",
    "provider": "twilio",
    "business_number": "+15550001234",
    "account_sid": "AC00000000000000000000000000000001",
    "auth_token": "twilio-auth-token",
}


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(data)
    assert str(caught.value).startswith("invalid configuration:")
    return caught.value.problems


def test_valid_configuration_loads_each_channel_with_its_providers_model() -> None:
    config = config_from_mapping({"channels": [META, TWILIO]})
    assert [(c.name, c.provider) for c in config.channels] == [("meta-main", "meta"), ("twilio-main", "twilio")]
    assert config.channel("twilio-main").business_number == "+15550001234"


def test_unknown_provider_is_named_with_its_channel_index() -> None:
    [problem] = problems_of({"channels": [META, {**TWILIO, "provider": "telegram"}]})
    assert problem.startswith("channels[1].provider: unknown provider 'telegram'")
    assert "meta" in problem and "twilio" in problem  # says which ones exist


def test_missing_app_secret_is_named_with_its_channel_index() -> None:
    meta = {k: v for k, v in META.items() if k != "app_secret"}
    assert problems_of({"channels": [TWILIO, meta]}) == ["channels[1].app_secret: Field required"]


def test_unknown_channel_field_is_refused() -> None:
    [problem] = problems_of({"channels": [{**META, "app_secrte": "typo"}]})
    assert problem.startswith("channels[0].app_secrte:")


def test_bad_business_number_is_named() -> None:
    [problem] = problems_of({"channels": [{**META, "business_number": "not a number"}]})
    assert problem.startswith("channels[0].business_number:")


def test_missing_environment_variable_is_named_with_where_it_was_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADLINE_TEST_NO_SUCH_SECRET", raising=False)
    problems = problems_of({"channels": [{**META, "app_secret": "env:LEADLINE_TEST_NO_SUCH_SECRET"}]})
    assert problems == ["channels[0].app_secret: environment variable LEADLINE_TEST_NO_SUCH_SECRET is not set"]


def test_secret_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADLINE_TEST_META_SECRET", "from-the-environment")
    config = config_from_mapping({"channels": [{**META, "app_secret": "env:LEADLINE_TEST_META_SECRET"}]})
    secret = config.channel("meta-main").app_secret  # type: ignore[attr-defined]
    assert secret.get_secret_value() == "from-the-environment"
    assert "from-the-environment" not in repr(config.channel("meta-main"))


def test_bad_router_regex_is_named_with_its_rule_index() -> None:
    router = [
        {"name": "ok", "then": [{"handler": "tag", "args": {"tag": "x"}}]},
        {"name": "bad", "when": {"regex": "(unclosed"}, "then": [{"handler": "tag", "args": {"tag": "y"}}]},
    ]
    [problem] = problems_of({"channels": [META], "router": router})
    assert problem.startswith("router[1].when.regex:")
    assert "invalid regular expression" in problem


def test_duplicate_channel_names_are_refused() -> None:
    assert problems_of({"channels": [META, TWILIO, {**TWILIO, "name": "meta-main"}]}) == [
        "channels[2].name: 'meta-main' is already the name of channels[0]"
    ]


def test_router_rule_naming_an_unknown_channel_is_named_with_its_rule_index() -> None:
    router = [
        {"name": "a", "when": {"channel": "meta-main"}, "then": [{"handler": "tag", "args": {"tag": "a"}}]},
        {
            "name": "b",
            "when": {"channel": ["meta-main", "meta-typo"]},
            "then": [{"handler": "tag", "args": {"tag": "b"}}],
        },
    ]
    assert problems_of({"channels": [META], "router": router}) == [
        "router[1].when.channel: no channel named 'meta-typo'"
    ]


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADLINE_TEST_NO_SUCH_TOKEN", raising=False)
    channels = [
        {**META, "provider": "nope"},
        {**TWILIO, "auth_token": "env:LEADLINE_TEST_NO_SUCH_TOKEN"},
        {k: v for k, v in META.items() if k != "verify_token"},
    ]
    problems = problems_of({"channels": channels})
    assert any(p.startswith("channels[0].provider:") for p in problems)
    assert any(p.startswith("channels[1].auth_token: environment variable") for p in problems)
    assert any(p.startswith("channels[2].verify_token:") for p in problems)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "leadline.toml"
    path.write_text('database_url = "sqlite+aiosqlite:///from-file.db"\nmax_body_bytes = 4096\n', encoding="utf-8")
    monkeypatch.setenv("LEADLINE_DATABASE_URL", "postgresql+asyncpg://env-host/leadline")
    config = load_config(path)
    assert config.settings.database_url == "postgresql+asyncpg://env-host/leadline"
    assert config.settings.max_body_bytes == 4096


def test_nested_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "leadline.toml"
    path.write_text("[worker]\nmax_attempts = 3\n", encoding="utf-8")
    monkeypatch.setenv("LEADLINE_WORKER__MAX_ATTEMPTS", "5")
    assert load_config(path).settings.worker.max_attempts == 5


def test_unreadable_toml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "leadline.toml"
    path.write_text("channels = [", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(f"{path}: not valid TOML")


def test_api_keys_are_kept_only_as_hashes() -> None:
    key = "crm-key-0123456789abcdef"
    config = config_from_mapping({"api_keys": [{"name": "crm", "key": key}]})
    [stored] = config.settings.api_keys
    assert stored.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(config.settings)
    assert key not in config.settings.model_dump_json()


def test_short_api_key_is_refused() -> None:
    [problem] = problems_of({"api_keys": [{"name": "crm", "key": "short"}]})
    assert problem.startswith("api_keys[0]")
    assert "16 characters" in problem


@pytest.mark.parametrize(
    ("media", "says"),
    [
        ({"storage": "s3"}, "needs s3_bucket"),
        ({"storage": "s3", "s3_bucket": "media", "s3_access_key_id": "key"}, "both s3_access_key_id"),
        ({"storage": "ftp"}, "media.storage"),
    ],
)
def test_an_incomplete_s3_media_storage_is_named(media: dict[str, Any], says: str) -> None:
    [problem] = problems_of({"channels": [META], "media": media})
    assert says in problem


def test_s3_media_storage_with_its_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_S3_SECRET", "s3-secret-value")
    media = {
        "storage": "s3",
        "s3_bucket": "media",
        "s3_access_key_id": "key",
        "s3_secret_access_key": "env:TEST_S3_SECRET",
    }
    config = config_from_mapping({"channels": [META], "media": media})
    assert config.settings.media.s3_secret_access_key is not None
    assert config.settings.media.s3_secret_access_key.get_secret_value() == "s3-secret-value"
    assert "s3-secret-value" not in repr(config.settings.media)
