"""Provider-neutral message shapes: what every webhook translator produces and every adapter accepts.

Nothing here knows a Graph API field or a Twilio parameter name; the translators in
``leadline.providers.<name>`` map their wire formats onto these types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NewType

MessageId = NewType("MessageId", str)
"""The id a provider gave a message (a Meta wamid, a Twilio SID)."""

JsonObject = dict[str, Any]


class MessageKind(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VOICE = "voice"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    BUTTON_REPLY = "button_reply"
    LIST_REPLY = "list_reply"
    TEMPLATE_BUTTON = "template_button"
    REACTION = "reaction"
    TEMPLATE = "template"
    UNSUPPORTED = "unsupported"


MEDIA_KINDS = frozenset(
    {
        MessageKind.IMAGE,
        MessageKind.AUDIO,
        MessageKind.VOICE,
        MessageKind.VIDEO,
        MessageKind.DOCUMENT,
        MessageKind.STICKER,
    }
)


@dataclass(frozen=True, slots=True)
class MediaRef:
    """A media item as the provider refers to it: a Meta media id or a Twilio media URL."""

    ref: str
    mime_type: str | None = None
    filename: str | None = None
    caption: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyChoice:
    """What a customer tapped: an interactive button or list row, or a template quick reply."""

    id: str | None
    title: str | None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Reaction:
    """A reaction to ``target_message_id``; an empty ``emoji`` means the reaction was removed."""

    target_message_id: str
    emoji: str


@dataclass(frozen=True, slots=True)
class Referral:
    """Click-to-WhatsApp ad or post attribution carried by a conversation's first message."""

    source_type: str | None = None
    source_id: str | None = None
    source_url: str | None = None
    headline: str | None = None
    body: str | None = None
    media_type: str | None = None
    media_url: str | None = None
    ctwa_clid: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderErrorDetail:
    code: str
    title: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message a customer sent to one of our business numbers."""

    provider: str
    channel: str
    provider_message_id: MessageId
    sender: str | None
    """The customer's number in E.164 (``+5215512345678``); None when WhatsApp withholds it (a customer
    with a username): then ``sender_provider_id`` (Meta's business-scoped user id) is who wrote."""
    business_number: str
    """The business number that received it, in E.164."""
    kind: MessageKind
    timestamp: datetime
    sender_provider_id: str | None = None
    """The provider's own user id (Meta ``wa_id``/``user_id``, Twilio ``WaId``) when it differs in form."""
    profile_name: str | None = None
    text: str | None = None
    media: tuple[MediaRef, ...] = ()
    location: Location | None = None
    contacts: tuple[JsonObject, ...] = ()
    reply_choice: ReplyChoice | None = None
    reaction: Reaction | None = None
    reply_to: str | None = None
    """The provider id of the message this one quotes or answers."""
    forwarded: bool = False
    referral: Referral | None = None
    original_kind: str | None = None
    """The provider's own name for the kind, kept when ``kind`` is ``unsupported``."""
    errors: tuple[ProviderErrorDetail, ...] = ()
    raw: JsonObject = field(default_factory=dict)


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    """In leadline's outbox, not yet handed to the provider."""
    HELD = "held"
    """Kept by leadline: its channel is down and it could not move (``leadline held``); never sent as it is."""
    ACCEPTED = "accepted"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELED = "canceled"
    DELIVERED = "delivered"
    READ = "read"

    @property
    def rank(self) -> int:
        """Statuses only move to a higher rank.

        ``failed`` ranks above ``sent`` and below ``delivered``: a failure overrides an earlier
        acceptance, but a later proof of delivery (which providers do send after a failure) wins.
        """
        return _STATUS_RANK[self]


_STATUS_RANK = {
    DeliveryStatus.QUEUED: 0,
    DeliveryStatus.HELD: 0,
    DeliveryStatus.ACCEPTED: 10,
    DeliveryStatus.SENDING: 20,
    DeliveryStatus.SENT: 30,
    DeliveryStatus.FAILED: 35,
    DeliveryStatus.CANCELED: 35,
    DeliveryStatus.DELIVERED: 40,
    DeliveryStatus.READ: 50,
}


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A provider's report on a message we sent."""

    provider: str
    channel: str
    provider_message_id: MessageId
    status: DeliveryStatus
    timestamp: datetime
    recipient: str | None = None
    """The customer's number in E.164, when the provider says."""
    error: ProviderErrorDetail | None = None
    raw: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderNotice:
    """A webhook item that is neither a message nor a status (template, account or quality updates).

    Kept so that their own handlers (templates, channel health) can act on them; never rejected.
    """

    provider: str
    channel: str | None
    topic: str
    """The provider's name for the kind of notice (Meta's ``changes[].field``)."""
    account_id: str | None
    dedupe_key: str
    timestamp: datetime
    payload: JsonObject = field(default_factory=dict)


InboundEvent = InboundMessage | StatusUpdate | ProviderNotice
