"""What a lead's timeline says about a message: a short human summary and a provider-neutral record."""

from __future__ import annotations

import enum
from typing import Any

import orjson

from leadline.domain.messages import MEDIA_KINDS, InboundMessage, MessageKind


class TimelineKind(enum.StrEnum):
    MESSAGE_IN = "message_in"
    MESSAGE_OUT = "message_out"
    STATUS = "status"
    NOTE = "note"
    TAG = "tag"
    OWNER = "owner"
    ROUTING = "routing"
    """A queued message moved to another channel (failover), or was converted to a template to move."""


def message_content(message: InboundMessage) -> dict[str, Any]:
    """The normalised message as JSON, without the provider's raw payload (kept separately)."""
    # orjson knows dataclasses, enums and datetimes, and is several times faster than asdict on this path.
    content: dict[str, Any] = orjson.loads(orjson.dumps(message))
    content.pop("raw", None)
    return content


def summarize(message: InboundMessage) -> str:
    """One line for a person reading the timeline."""
    kind = message.kind
    if kind is MessageKind.TEXT:
        return message.text or ""
    if kind in MEDIA_KINDS:
        label = f"[{kind.value}]"
        media = message.media[0] if message.media else None
        detail = message.text or (media.filename if media else None)
        return f"{label} {detail}" if detail else label
    if kind is MessageKind.LOCATION and message.location:
        place = message.location.name or message.location.address
        coords = f"{message.location.latitude:.5f},{message.location.longitude:.5f}"
        return f"[location] {place} ({coords})" if place else f"[location] {coords}"
    if kind in (MessageKind.BUTTON_REPLY, MessageKind.LIST_REPLY, MessageKind.TEMPLATE_BUTTON) and message.reply_choice:
        return f"[{kind.value}] {message.reply_choice.title or message.reply_choice.id}"
    if kind is MessageKind.REACTION and message.reaction:
        return f"[reaction] {message.reaction.emoji}" if message.reaction.emoji else "[reaction removed]"
    if kind is MessageKind.CONTACTS:
        return f"[contacts] {len(message.contacts) or len(message.media)} shared"
    if kind is MessageKind.UNSUPPORTED:
        return f"[unsupported: {message.original_kind or 'unknown'}]"
    return f"[{kind.value}] {message.text or ''}".rstrip()
