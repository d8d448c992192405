"""The seam between leadline and a messaging provider.

Business logic sees only :class:`MessagingProvider` (sending) and the events a
:class:`WebhookTranslator` yields (receiving). Each provider lives in its own folder and registers a
:class:`ProviderPlugin` in :mod:`leadline.providers.registry`; nothing outside that folder knows its
wire format.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from leadline.domain.messages import InboundEvent, MessageId

if TYPE_CHECKING:
    import aiohttp

    from leadline.config import ChannelConfig


# --------------------------------------------------------------------------------------------
# Receiving


@dataclass(frozen=True, slots=True)
class RawRequest:
    """An HTTP request as a translator needs it: nothing parsed, the body byte-exact."""

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes
    public_url: str
    """The URL the provider called, as it saw it (rebuilt from configuration behind a proxy)."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """What to answer the provider once the events are durable."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass(slots=True)
class ItemProblem:
    """One item of a batch that could not be translated; the rest of the batch goes on."""

    channel: str | None
    reason: str
    item: Any = None


@dataclass(slots=True)
class TranslatedWebhook:
    """The result of translating one verified webhook request."""

    events: list[InboundEvent] = field(default_factory=list)
    problems: list[ItemProblem] = field(default_factory=list)
    unknown_channels: set[str] = field(default_factory=set)
    """Provider addresses (a phone_number_id, a To) that no configured channel owns."""
    reply: WebhookReply = field(default_factory=WebhookReply)


class WebhookRejected(Exception):
    """The request is refused as a whole; nothing from it is stored.

    ``code`` is leadline's stable error code (``bad_signature``, ``malformed_body``, ...);
    ``reason`` goes to the log and never contains a secret.
    """

    def __init__(self, status: int, code: str, message: str, *, channel: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.channel = channel
        self.reason = reason or message


class WebhookTranslator(Protocol):
    """Verifies a provider's webhook requests and turns them into leadline events."""

    def handshake(self, request: RawRequest) -> WebhookReply:
        """Answer a subscription check (Meta's GET); raise :class:`WebhookRejected` to refuse."""
        ...

    def translate(self, request: RawRequest) -> TranslatedWebhook:
        """Verify the request's signature and translate its body.

        Raises :class:`WebhookRejected` for a bad signature or an unreadable body. A malformed item
        inside a readable batch is reported in ``problems`` instead, so the others are kept.
        """
        ...


# --------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True, slots=True)
class TemplateSend:
    """A template rendered for one provider: its name there, language and parameters."""

    name: str
    language: str
    body_parameters: Sequence[str] = ()
    named_parameters: Mapping[str, str] = field(default_factory=dict)
    header: Mapping[str, Any] | None = None
    buttons: Sequence[Mapping[str, Any]] = ()
    provider_template_id: str | None = None
    """The provider's own id where it sends by id (Twilio's Content SID)."""


class MessagingProvider(Protocol):
    """Sends through one channel of one provider. Every call returns the provider's message id."""

    async def send_text(
        self, to: str, text: str, *, preview_url: bool = False, reply_to: str | None = None
    ) -> MessageId: ...

    async def send_template(self, to: str, template: TemplateSend, *, reply_to: str | None = None) -> MessageId: ...

    async def send_media(
        self,
        to: str,
        kind: str,
        url: str,
        *,
        caption: str | None = None,
        filename: str | None = None,
        reply_to: str | None = None,
    ) -> MessageId: ...

    async def mark_read(self, provider_message_id: str) -> None: ...


class ErrorClass(enum.StrEnum):
    """What a provider error means for leadline, decided in the provider's folder, nowhere else."""

    RETRY_LATER = "retry_later"
    NEEDS_TEMPLATE = "needs_template"
    RECIPIENT_UNREACHABLE = "recipient_unreachable"
    CHANNEL_FAILURE = "channel_failure"
    BAD_REQUEST = "bad_request"


class ProviderError(Exception):
    """A provider refused or failed a call."""

    def __init__(
        self,
        error_class: ErrorClass,
        code: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{code}: {message}")
        self.error_class = error_class
        self.code = code
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after


def numeric_code(code: int | str) -> int | None:
    """A provider's error code as a number (they arrive as ints or digit strings); None if it is not one."""
    if isinstance(code, int):
        return code
    text = code.strip()
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------------------------
# Registration


@dataclass(frozen=True, slots=True)
class ProviderPlugin:
    """Everything leadline needs to know about one provider."""

    name: str
    channel_config: type[ChannelConfig]
    make_translator: Callable[[Sequence[ChannelConfig]], WebhookTranslator]
    make_client: Callable[[ChannelConfig, aiohttp.ClientSession, str | None], MessagingProvider] | None = None
    """Builds a sender for one channel: its config, its pooled session, and the URL leadline's webhooks are
    reachable at (``public_url``), for providers that are told per message where to report statuses."""
    check_credentials: Callable[[ChannelConfig, aiohttp.ClientSession], Awaitable[str]] | None = None
    """A cheap authenticated call to the provider: returns a short description of the account or number,
    raises :class:`ProviderError` when the credentials are refused (what a cutover plan checks)."""
