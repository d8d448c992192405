"""Configuration: one TOML file (``LEADLINE_CONFIG``, default ``./leadline.toml``), environment on top.

- Any string value ``env:NAME`` is replaced by the environment variable ``NAME`` (secrets stay out of
  the file).
- ``LEADLINE_<FIELD>`` overrides a top-level field (``LEADLINE_DATABASE_URL``, ``LEADLINE_PUBLIC_URL``,
  ``LEADLINE_MAX_BODY_BYTES``...); nested fields use ``__`` (``LEADLINE_WORKER__MAX_ATTEMPTS``).
- Each channel is validated by its provider's own model, registered in
  :mod:`leadline.providers.registry`.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from leadline.domain.phones import InvalidPhoneNumber, to_e164

DEFAULT_CONFIG_PATH = "leadline.toml"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./leadline.db"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` says exactly where and why, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class ChannelConfig(BaseModel):
    """What every channel has, whatever its provider. Providers subclass it with their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    provider: str
    business_number: str
    """The business's WhatsApp number in E.164."""
    api_base_url: str | None = None
    """Where the provider's API is; point it at the sandbox or a local server for tests."""
    rate_limit_per_second: float = Field(default=80.0, ge=0)
    """Sends per second handed to the provider (Meta's default per number is 80); 0 turns the limit off.
    Each worker process applies it on its own: with N workers, give each 1/N of the provider's limit."""

    @property
    def can_send(self) -> bool:
        """Whether the channel has what it needs to send (a receive-only channel lacks credentials)."""
        return True

    @field_validator("business_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        try:
            return to_e164(value)
        except InvalidPhoneNumber as exc:
            raise ValueError(str(exc)) from exc


class ApiKeyConfig(BaseModel):
    """An API key given in the file; only its SHA-256 is kept once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    key_sha256: str

    @model_validator(mode="before")
    @classmethod
    def _hash_plain_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key" in data:
            data = dict(data)
            key = data.pop("key")
            if not isinstance(key, str) or len(key) < 16:
                raise ValueError("an API key must be a string of at least 16 characters")
            data["key_sha256"] = hash_api_key(key)
        return data


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RuleCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: list[str] | None = None
    kind: list[str] | None = None
    keyword: list[str] | None = None
    """Matches when the text contains any of these words (case-insensitive, whole words)."""
    regex: str | None = None
    lead: Literal["new", "returning"] | None = None

    @field_validator("channel", "kind", "keyword", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value


class HandlerCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    handler: str
    """A built-in (``tag``, ``assign_owner``, ``add_note``), a dotted path ``pkg.module:function``, or the
    name of a ``leadline.handlers`` entry point."""
    args: dict[str, Any] = Field(default_factory=dict)


class RouterRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    when: RuleCondition = Field(default_factory=RuleCondition)
    then: list[HandlerCall]
    stop: bool = False
    """Stop evaluating later rules once this one matched."""


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Run a worker inside ``leadline serve``."""
    poll_interval: float = Field(default=0.5, gt=0)
    batch_size: int = Field(default=50, ge=1)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_max: float = Field(default=900.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    """A claimed job whose worker died is claimed again after this long."""


class SubscriberConfig(BaseModel):
    """A CRM endpoint that receives every timeline event as a signed JSON POST."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    url: str
    secret: SecretStr
    timeout_seconds: float = Field(default=10.0, gt=0)
    all_events: bool = True
    """Every timeline event; with false, only what router rules send with the ``forward_to_crm`` handler."""

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("a subscriber url must start with http:// or https://")
        return value


class MediaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: Literal["local", "s3"] = "local"
    """``local``: files under ``storage_dir``; ``s3``: objects in ``s3_bucket`` (downloads staged under
    ``storage_dir``)."""
    storage_dir: str = "./var/media"
    """Where inbound media fetched from providers is kept (with ``s3``: only staged while downloading)."""
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    """Downloads stop at this size (WhatsApp's own limit for documents is 100 MB)."""
    s3_bucket: str | None = Field(default=None, min_length=3, max_length=63)
    s3_prefix: str = Field(default="", max_length=512)
    """Put before every key, e.g. ``leadline/media/``."""
    s3_endpoint_url: str | None = None
    """For S3-compatible stores (MinIO, R2, Ceph...); unset for AWS S3."""
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    """Both, or neither (then the usual AWS sources: environment, instance role)."""

    @model_validator(mode="after")
    def _s3_complete(self) -> MediaConfig:
        if self.storage == "s3" and self.s3_bucket is None:
            raise ValueError("storage = 's3' needs s3_bucket")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("give both s3_access_key_id and s3_secret_access_key, or neither")
        if self.s3_endpoint_url is not None and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ValueError("s3_endpoint_url must start with http:// or https://")
        return self


class ReengagementTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    language: str
    variables: dict[str, str] | list[str] = Field(default_factory=list)


class RoutingConfig(BaseModel):
    """The routing policy's tunables; its flags (overrides, rollout) live in the database (/v1/routing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drain_age_hours: float = Field(default=24.0, ge=0)
    """A lead whose last message on a channel is younger than this stays on it (threads drain there)."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive transient failures (5xx, timeouts) that open a channel's circuit; account-level errors
    (payment, account locked, token expired) open it at once."""
    probe_after_seconds: float = Field(default=30.0, gt=0)
    """How long an open circuit waits before letting one message through as a probe (half-open)."""
    free_form_on_failover: Literal["template", "hold"] = "hold"
    """A free-form reply whose window exists only on a dead channel: sent as ``reengagement_template`` on a
    healthy channel, or held and listed (GET /v1/held, ``leadline held``) until the channel is back."""
    reengagement_template: ReengagementTemplate | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADLINE_", env_nested_delimiter="__", extra="forbid")

    database_url: str = DEFAULT_DATABASE_URL
    public_url: str | None = None
    """The URL providers call leadline at (``https://crm.example.com``); webhook signatures that cover
    the URL (Twilio's) are checked against it, so they also hold behind a reverse proxy."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: str = "info"
    channels: list[dict[str, Any]] = Field(default_factory=list)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    router: list[RouterRule] = Field(default_factory=list)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    default_channel: str | None = None
    """Where a message to a lead with no conversation goes, until the routing flags name another."""
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    subscribers: list[SubscriberConfig] = Field(default_factory=list)
    media: MediaConfig = Field(default_factory=MediaConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which arrives as init kwargs.
        return env_settings, init_settings

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")


class LeadlineConfig:
    """Validated settings with each channel parsed by its provider's model."""

    def __init__(self, settings: Settings, channels: list[ChannelConfig]):
        self.settings = settings
        self.channels = channels
        self._by_name = {c.name: c for c in channels}

    def channel(self, name: str) -> ChannelConfig:
        return self._by_name[name]

    def channels_of(self, provider: str) -> list[ChannelConfig]:
        return [c for c in self.channels if c.provider == provider]


def resolve_env_references(value: Any, path: str = "", problems: list[str] | None = None) -> Any:
    """Replace every ``env:NAME`` string with the variable's value, noting the ones that are unset."""
    problems = [] if problems is None else problems
    if isinstance(value, dict):
        return {k: resolve_env_references(v, f"{path}.{k}" if path else k, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env_references(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            problems.append(f"{path}: environment variable {name} is not set")
            return ""
        return os.environ[name]
    return value


def _format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for error in exc.errors():
        loc = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        lines.append(f"{loc.lstrip('.') or '(top level)'}: {error['msg']}")
    return lines


def config_from_mapping(data: dict[str, Any]) -> LeadlineConfig:
    """Validate a configuration given as a mapping (what the TOML file holds)."""
    from leadline.providers.registry import get_plugin, plugin_names

    problems: list[str] = []
    data = resolve_env_references(data, problems=problems)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(problems + _format_validation_error(exc)) from None

    channels: list[ChannelConfig] = []
    for index, raw in enumerate(settings.channels):
        provider = raw.get("provider")
        plugin = get_plugin(provider) if isinstance(provider, str) else None
        if plugin is None:
            problems.append(
                f"channels[{index}].provider: unknown provider {provider!r} (known: {', '.join(plugin_names())})"
            )
            continue
        try:
            channels.append(plugin.channel_config.model_validate(raw))
        except ValidationError as exc:
            problems.extend(_format_validation_error(exc, prefix=f"channels[{index}]"))

    first_use: dict[str, int] = {}
    for index, raw in enumerate(settings.channels):
        name = raw.get("name")
        if isinstance(name, str) and name in first_use:
            problems.append(f"channels[{index}].name: {name!r} is already the name of channels[{first_use[name]}]")
        elif isinstance(name, str):
            first_use[name] = index
    seen = {channel.name for channel in channels}
    if settings.routing.free_form_on_failover == "template" and settings.routing.reengagement_template is None:
        problems.append("routing.reengagement_template: required when routing.free_form_on_failover = 'template'")
    if settings.default_channel is not None and settings.default_channel not in seen:
        problems.append(f"default_channel: no channel named {settings.default_channel!r}")
    for rule_index, rule in enumerate(settings.router):
        for channel_name in rule.when.channel or []:
            if channel_name not in seen:
                problems.append(f"router[{rule_index}].when.channel: no channel named {channel_name!r}")
    if problems:
        raise ConfigError(problems)
    return LeadlineConfig(settings, channels)


def config_path() -> Path:
    return Path(os.environ.get("LEADLINE_CONFIG", DEFAULT_CONFIG_PATH))


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The TOML file as a mapping; a missing default file is an empty configuration."""
    path = path or config_path()
    if path.exists():
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    if "LEADLINE_CONFIG" in os.environ:
        raise ConfigError([f"{path}: file not found (named by LEADLINE_CONFIG)"])
    return {}


def load_config(path: Path | None = None) -> LeadlineConfig:
    """Load the TOML file and the environment."""
    return config_from_mapping(read_config_file(path))
