"""What the template library needs from a provider, and where each provider's implementation is.

The provider folders (``providers/meta/templates.py``, ``providers/twilio/templates.py``) hold every
wire detail; this module only names the contract and picks the implementation by provider name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from leadline.config import ChannelConfig
from leadline.providers.base import ErrorClass, ProviderError, TemplateSend
from leadline.providers.http import new_client_session
from leadline.templates.definitions import TemplateDefinition

APPROVED = "APPROVED"
PENDING = "PENDING"
REJECTED = "REJECTED"
NOT_SUBMITTED = "NOT_SUBMITTED"
"""leadline's own status for a template never submitted to a channel."""
UNSUBMITTED = "UNSUBMITTED"
"""The provider has the template but it was never sent for WhatsApp approval (Twilio Content)."""


@dataclass(frozen=True, slots=True)
class RemoteTemplate:
    """A template as a provider knows it, statuses in WhatsApp's upper-case vocabulary."""

    provider_template_id: str
    name: str
    language: str
    status: str
    category: str | None = None
    rejection_reason: str | None = None
    definition: TemplateDefinition | None = None
    """Read back from the provider, for importing; None when its format cannot be mapped."""
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Submission:
    template: RemoteTemplate
    created: bool
    """False when the provider had the template already and it was adopted."""


class TemplateApi(Protocol):
    """A provider's template management for one channel."""

    async def submit(self, definition: TemplateDefinition, known_id: str | None) -> Submission:
        """Make sure the provider has ``definition`` and has it reviewed by WhatsApp.

        Idempotent: with ``known_id`` (from an earlier submission) or when the provider already has
        a template of that name and language, that one is adopted instead of creating another.
        """
        ...

    async def list_templates(self) -> list[RemoteTemplate]:
        """Every WhatsApp template the channel's account has, with its approval status."""
        ...


@dataclass(frozen=True, slots=True)
class TemplateStatusReport:
    """A provider's notice that a template's status changed (Meta's message_template_status_update)."""

    status: str
    provider_template_id: str | None
    name: str | None
    language: str | None
    rejection_reason: str | None = None
    category: str | None = None


TemplateStatusParser = Callable[[Mapping[str, Any]], TemplateStatusReport | None]


def template_status_parser(provider: str) -> TemplateStatusParser | None:
    """How ``provider``'s template status notices read; None when it sends none."""
    if provider == "meta":
        from leadline.providers.meta.templates import parse_template_status_update

        return parse_template_status_update
    return None


def channels_sharing_templates(
    channel_names: list[str], channels: list[ChannelConfig], account_id: str | None
) -> list[str]:
    """The channels a template notice for ``account_id`` concerns: templates live in a Meta WABA, which
    several numbers may share."""
    from leadline.providers.meta.config import MetaChannelConfig

    sharing = [c.name for c in channels if isinstance(c, MetaChannelConfig) and account_id and c.waba_id == account_id]
    return sharing or channel_names


TemplateSendRenderer = Callable[[TemplateDefinition, Mapping[str, str], str | None], TemplateSend]


def template_send_renderer(provider: str) -> TemplateSendRenderer:
    if provider == "meta":
        from leadline.providers.meta.templates import meta_template_send

        return meta_template_send
    if provider == "twilio":
        from leadline.providers.twilio.templates import twilio_template_send

        return twilio_template_send
    raise ProviderError(ErrorClass.BAD_REQUEST, "templates_unsupported", f"provider {provider!r} has no templates")


def supports_templates(channel: ChannelConfig) -> bool:
    return channel.provider in ("meta", "twilio")


def make_template_api(channel: ChannelConfig, session: aiohttp.ClientSession) -> TemplateApi:
    """The template API of ``channel``; ProviderError when its provider has none or it lacks credentials."""
    from leadline.providers.meta.config import MetaChannelConfig
    from leadline.providers.twilio.config import TwilioChannelConfig

    if isinstance(channel, MetaChannelConfig):
        from leadline.providers.meta.templates import MetaTemplates

        return MetaTemplates(channel, session)
    if isinstance(channel, TwilioChannelConfig):
        from leadline.providers.twilio.templates import TwilioTemplates

        return TwilioTemplates(channel, session)
    raise ProviderError(
        ErrorClass.BAD_REQUEST,
        "templates_unsupported",
        f"channel {channel.name!r} ({channel.provider}) has no templates",
    )


@asynccontextmanager
async def open_template_api(channel: ChannelConfig) -> AsyncIterator[TemplateApi]:
    """A template API with its own HTTP session, closed on exit."""
    session = new_client_session(timeout_seconds=30.0, limit=16)
    try:
        yield make_template_api(channel, session)
    finally:
        await session.close()
