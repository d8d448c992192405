"""Meta WhatsApp Cloud API webhooks: the subscription handshake, the signature, and the translation of
``whatsapp_business_account`` payloads into leadline events.

Every level of a payload is a list, and one post can carry several entries, changes, messages and
statuses. Each item is translated on its own: a malformed one becomes an :class:`ItemProblem` and the
rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from leadline.config import ChannelConfig
from leadline.domain.messages import (
    DeliveryStatus,
    InboundEvent,
    InboundMessage,
    JsonObject,
    Location,
    MediaRef,
    MessageId,
    MessageKind,
    ProviderErrorDetail,
    ProviderNotice,
    Reaction,
    Referral,
    ReplyChoice,
    StatusUpdate,
)
from leadline.domain.phones import InvalidPhoneNumber, to_e164
from leadline.providers.base import ItemProblem, RawRequest, TranslatedWebhook, WebhookRejected, WebhookReply
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.signature import signature_matches

PROVIDER = "meta"
SIGNATURE_HEADER = "x-hub-signature-256"

# Upper bounds on what leadline keeps of an id (the columns of leadline.store.tables), far above Meta's
# real ids (a wamid is ~60 characters). A longer one is not Meta's: its item is refused like any
# other malformed item, instead of failing the database write of the whole batch.
_MAX_ID = 128
_MAX_USER_ID = 64
_MAX_ERROR_CODE = 32
_MAX_TOPIC = 64


class MetaWebhookTranslator:
    """Verifies and translates webhooks for the configured Meta channels."""

    def __init__(self, channels: Sequence[MetaChannelConfig]):
        self._channels = tuple(channels)

    @classmethod
    def for_channels(cls, channels: Sequence[ChannelConfig]) -> MetaWebhookTranslator:
        return cls([channel for channel in channels if isinstance(channel, MetaChannelConfig)])

    def handshake(self, request: RawRequest) -> WebhookReply:
        query = parse_qs(request.query_string, keep_blank_values=True)
        mode = _first(query, "hub.mode")
        token = _first(query, "hub.verify_token")
        challenge = _first(query, "hub.challenge")
        if mode == "subscribe" and token is not None and challenge is not None and self._knows_token(token):
            return WebhookReply(200, challenge.encode(), "text/plain")
        raise WebhookRejected(403, "verification_failed", "the verify token or mode does not match")

    def translate(self, request: RawRequest) -> TranslatedWebhook:
        header = request.header(SIGNATURE_HEADER)
        if header is None:
            raise WebhookRejected(401, "missing_signature", "the X-Hub-Signature-256 header is missing")
        trusted = [
            c for c in self._channels if signature_matches(c.app_secret.get_secret_value(), request.body, header)
        ]
        if not trusted:
            secrets = {c.app_secret.get_secret_value() for c in self._channels}
            raise WebhookRejected(
                403,
                "bad_signature",
                "the X-Hub-Signature-256 signature does not match",
                channel=self._claimed_channel(request.body),
                reason=f"X-Hub-Signature-256 matches none of the {len(secrets)} configured Meta app secrets",
            )
        payload = _parse_body(request.body)
        batch = _Batch(trusted, TranslatedWebhook())
        for entry in payload["entry"]:
            batch.add_entry(entry)
        return batch.result

    def _knows_token(self, token: str) -> bool:
        given = token.encode()
        # Every channel is compared, so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(given, c.verify_token.get_secret_value().encode()) for c in self._channels]
        return any(matches)

    def _claimed_channel(self, body: bytes) -> str | None:
        """The channel an unverified body says it is for, so that a rejection can be logged against it."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        by_phone_id = {c.phone_number_id: c.name for c in self._channels}
        for _, change in _changes(payload):
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(phone_number_id, str) and phone_number_id in by_phone_id:
                return by_phone_id[phone_number_id]
        return None


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _parse_body(body: bytes) -> JsonObject:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookRejected(400, "malformed_body", "the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise WebhookRejected(400, "malformed_body", "the body is not a JSON object with an entry list")
    try:
        # Every part of the payload ends up stored as JSON (raw items, notice payloads, problems):
        # a body that orjson cannot write back, nested past its 254 levels, is refused now, not there.
        orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise WebhookRejected(400, "malformed_body", "the body is nested too deeply") from None
    # JSON can carry NUL only as the escape \u0000; PostgreSQL text cannot hold it, and no WhatsApp
    # text needs it, so it is dropped once here rather than failing the write of the whole batch.
    return _without_nul(payload) if b"\\u0000" in body else payload


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _changes(payload: Any) -> Iterator[tuple[JsonObject, JsonObject]]:
    """Every well-formed (entry, change) pair, skipping anything malformed: for best-effort lookups only."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if isinstance(change, dict):
                yield entry, change


# --------------------------------------------------------------------------------------------
# Walking a verified payload


class _BadItem(Exception):
    """One item of the payload cannot be translated; the message is its :class:`ItemProblem` reason."""


@dataclass(slots=True)
class _Batch:
    """Translates the entries of one verified payload into ``result``.

    ``trusted`` holds only the channels whose app secret signed the body: a change naming another
    channel's number is not attributed to it, whatever the body claims.
    """

    trusted: list[MetaChannelConfig]
    result: TranslatedWebhook

    def add_entry(self, entry: Any) -> None:
        if not isinstance(entry, dict):
            self._problem(None, "entry is not an object", entry)
            return
        changes = entry.get("changes")
        if not isinstance(changes, list):
            self._problem(None, "entry.changes is not a list", entry)
            return
        for change in changes:
            self._add_change(entry, change)

    def _add_change(self, entry: JsonObject, change: Any) -> None:
        if not isinstance(change, dict):
            self._problem(None, "change is not an object", change)
            return
        topic = change.get("field")
        value = change.get("value")
        if not isinstance(topic, str) or not isinstance(value, dict):
            self._problem(None, "change has no field name or its value is not an object", change)
            return
        if topic == "messages":
            self._add_messages_change(entry, value)
        else:
            self._add_notice(entry, topic, value)

    def _add_messages_change(self, entry: JsonObject, value: JsonObject) -> None:
        phone_number_id = _phone_number_id(value)
        if phone_number_id is None:
            self._problem(None, "messages change without metadata.phone_number_id", value)
            return
        channel = next((c for c in self.trusted if c.phone_number_id == phone_number_id), None)
        if channel is None:
            self.result.unknown_channels.add(phone_number_id)
            return
        contacts = _Contacts.of(value.get("contacts"))
        self._add_items(channel, value, "messages", lambda item: _message(channel, item, contacts))
        self._add_items(channel, value, "statuses", lambda item: _status(channel, item))
        self._add_items(channel, value, "errors", lambda item: _error_notice(channel, entry, phone_number_id, item))

    def _add_items(
        self, channel: MetaChannelConfig, value: JsonObject, key: str, translate: Callable[[Any], InboundEvent]
    ) -> None:
        items = value.get(key, [])
        if not isinstance(items, list):
            self._problem(channel.name, f"{key} is not a list", items)
            return
        for item in items:
            try:
                self.result.events.append(translate(item))
            except _BadItem as exc:
                self._problem(channel.name, f"{key}[]: {exc}", item)

    def _add_notice(self, entry: JsonObject, topic: str, value: JsonObject) -> None:
        entry_id = _entry_id(entry)
        if len(topic) > _MAX_TOPIC or (entry_id is not None and len(entry_id) > _MAX_TOPIC):
            self._problem(None, "change field or entry id is too long", {"field": topic[:_MAX_TOPIC]})
            return
        channel = self._notice_channel(entry_id, _phone_number_id(value))
        notice = ProviderNotice(
            provider=PROVIDER,
            channel=channel,
            topic=topic,
            account_id=entry_id,
            dedupe_key=_dedupe_key(topic, {"entry": entry_id, "value": value}),
            timestamp=_entry_time(entry),
            payload=value,
        )
        self.result.events.append(notice)

    def _notice_channel(self, waba_id: str | None, phone_number_id: str | None) -> str | None:
        by_waba = next((c for c in self.trusted if waba_id is not None and c.waba_id == waba_id), None)
        by_phone = next((c for c in self.trusted if c.phone_number_id == phone_number_id), None)
        channel = by_waba or by_phone
        return channel.name if channel else None

    def _problem(self, channel: str | None, reason: str, item: Any) -> None:
        self.result.problems.append(ItemProblem(channel, reason, item))


def _phone_number_id(value: JsonObject) -> str | None:
    metadata = value.get("metadata")
    phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    return phone_number_id if isinstance(phone_number_id, str) and phone_number_id else None


def _entry_id(entry: JsonObject) -> str | None:
    entry_id = entry.get("id")
    return entry_id if isinstance(entry_id, str) else None


def _entry_time(entry: JsonObject) -> datetime:
    # A notice is kept even when its time is unreadable: the time only orders it, nothing keys on it.
    try:
        return _unix_time(entry.get("time"))
    except _BadItem:
        return datetime.now(UTC)


def _dedupe_key(topic: str, content: JsonObject) -> str:
    canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    return f"meta:{topic}:{hashlib.sha256(canonical).hexdigest()}"


def _error_notice(channel: MetaChannelConfig, entry: JsonObject, phone_number_id: str, error: Any) -> ProviderNotice:
    """An error of ``value.errors``: about the number or the app, not about one message."""
    error = _object(error, "error")
    entry_id = _entry_id(entry)
    if entry_id is not None:
        _bounded(entry_id, _MAX_TOPIC, "entry id")
    # The number is part of the key: two numbers of one account can report the same error.
    content = {"entry": entry_id, "phone_number_id": phone_number_id, "value": error}
    return ProviderNotice(
        provider=PROVIDER,
        channel=channel.name,
        topic="errors",
        account_id=entry_id,
        dedupe_key=_dedupe_key("errors", content),
        timestamp=_entry_time(entry),
        payload=error,
    )


# --------------------------------------------------------------------------------------------
# Reading fields


def _object(value: Any, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise _BadItem(f"{what} is not an object")
    return value


def _optional_object(data: JsonObject, key: str) -> JsonObject | None:
    value = data.get(key)
    return None if value is None else _object(value, key)


def _text(data: JsonObject, key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _BadItem(f"{key} is not a string")


def _required_text(data: JsonObject, key: str) -> str:
    value = _text(data, key)
    if not value:
        raise _BadItem(f"{key} is missing")
    return value


def _bounded(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise _BadItem(f"{what} is longer than {limit} characters")
    return value


def _unix_time(value: Any) -> datetime:
    """Meta's timestamps: unix seconds, as a string in messages and statuses, a number in ``entry.time``."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        seconds = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        raise _BadItem(f"timestamp {value!r} is not unix seconds")
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _BadItem(f"timestamp {value!r} is out of range") from None


def _whatsapp_number(wa_id: str, what: str) -> str:
    """A WhatsApp id (``from``, ``recipient_id``: digits without ``+``) in E.164."""
    try:
        return to_e164(wa_id)
    except InvalidPhoneNumber:
        raise _BadItem(f"{what} {wa_id!r} is not a phone number") from None


def _error_detail(error: Any) -> ProviderErrorDetail:
    error = _object(error, "error")
    code = error.get("code")
    if code is None:
        code = "unknown"
    elif isinstance(code, bool) or not isinstance(code, int | str):
        raise _BadItem("error code is not a number or string")
    error_data = _optional_object(error, "error_data") or {}
    return ProviderErrorDetail(
        code=_bounded(str(code), _MAX_ERROR_CODE, "error code"),
        title=_text(error, "title") or _text(error, "message"),
        detail=_text(error_data, "details"),
    )


def _error_details(data: JsonObject) -> tuple[ProviderErrorDetail, ...]:
    errors = data.get("errors", [])
    if not isinstance(errors, list):
        raise _BadItem("errors is not a list")
    return tuple(_error_detail(error) for error in errors)


# --------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class _Contacts:
    """``value.contacts`` by WhatsApp id and by user id: Meta does not promise they follow message order."""

    by_wa_id: dict[str, JsonObject]
    by_user_id: dict[str, JsonObject]

    @classmethod
    def of(cls, contacts: Any) -> _Contacts:
        # A malformed contact only costs a profile name, never the message, so it is skipped here.
        usable = [c for c in contacts if isinstance(c, dict)] if isinstance(contacts, list) else []
        by_wa_id = {c["wa_id"]: c for c in usable if isinstance(c.get("wa_id"), str)}
        by_user_id = {c["user_id"]: c for c in usable if isinstance(c.get("user_id"), str)}
        return cls(by_wa_id, by_user_id)

    def find(self, wa_id: str | None, user_id: str | None) -> JsonObject:
        by_wa_id = self.by_wa_id.get(wa_id) if wa_id else None
        return by_wa_id or (self.by_user_id.get(user_id) if user_id else None) or {}

    def only_user_id(self) -> str | None:
        """The user id of the change's one contact, if it has exactly one."""
        return next(iter(self.by_user_id)) if len(self.by_user_id) == 1 and not self.by_wa_id else None


@dataclass(frozen=True, slots=True)
class _Content:
    """What a message's type object says; the envelope (sender, time, context) is read separately."""

    kind: MessageKind
    text: str | None = None
    media: tuple[MediaRef, ...] = ()
    location: Location | None = None
    contacts: tuple[JsonObject, ...] = ()
    reply_choice: ReplyChoice | None = None
    reaction: Reaction | None = None
    original_kind: str | None = None


def _message(channel: MetaChannelConfig, message: Any, contacts: _Contacts) -> InboundMessage:
    message = _object(message, "message")
    message_id = _bounded(_required_text(message, "id"), _MAX_ID, "id")
    # ``from`` (the number) is absent when WhatsApp withholds it from a customer with a username: then the
    # business-scoped user id is who wrote (``from_user_id``, or the change's one contact's ``user_id``).
    wa_id = _text(message, "from")
    user_id = _text(message, "from_user_id") or (contacts.only_user_id() if wa_id is None else None)
    if wa_id is None and user_id is None:
        raise _BadItem("message has neither from nor from_user_id")
    message_type = _required_text(message, "type")
    contact = contacts.find(wa_id, user_id)
    profile = contact.get("profile")
    context = _optional_object(message, "context") or {}
    read_content = _CONTENT_READERS.get(message_type, _unsupported)
    content = read_content(message, message_type)
    return InboundMessage(
        provider=PROVIDER,
        channel=channel.name,
        provider_message_id=MessageId(message_id),
        sender=None if wa_id is None else _whatsapp_number(wa_id, "from"),
        business_number=channel.business_number,
        kind=content.kind,
        timestamp=_unix_time(message.get("timestamp")),
        sender_provider_id=_sender_provider_id(contact, wa_id, user_id),
        profile_name=_text(profile, "name") if isinstance(profile, dict) else None,
        text=content.text,
        media=content.media,
        location=content.location,
        contacts=content.contacts,
        reply_choice=content.reply_choice,
        reaction=content.reaction,
        reply_to=_text(context, "id"),
        forwarded=bool(context.get("forwarded") or context.get("frequently_forwarded")),
        referral=_referral(message),
        original_kind=content.original_kind,
        errors=_error_details(message),
        raw=message,
    )


def _sender_provider_id(contact: JsonObject, wa_id: str | None, user_id: str | None) -> str:
    # The business-scoped user id first, wherever it is given: it stays the customer's when the number is
    # later withheld, so the lead is found again by it.
    contact_wa_id = contact.get("wa_id")
    contact_user_id = contact.get("user_id")
    if isinstance(contact_user_id, str):
        found = contact_user_id
    elif user_id is not None:
        found = user_id
    elif isinstance(contact_wa_id, str):
        found = contact_wa_id
    else:
        assert wa_id is not None  # _message requires one of the two
        found = wa_id
    return _bounded(found, _MAX_USER_ID, "user id")


def _text_message(message: JsonObject, message_type: str) -> _Content:
    return _Content(MessageKind.TEXT, text=_text(_type_object(message, message_type), "body"))


def _media_message(message: JsonObject, message_type: str) -> _Content:
    media = _type_object(message, message_type)
    kind = MessageKind(message_type)
    if kind is MessageKind.AUDIO and media.get("voice") is True:
        kind = MessageKind.VOICE
    caption = _text(media, "caption")
    ref = MediaRef(
        ref=_required_text(media, "id"),
        mime_type=_text(media, "mime_type"),
        filename=_text(media, "filename"),
        caption=caption,
        sha256=_text(media, "sha256"),
    )
    return _Content(kind, text=caption, media=(ref,))


def _location_message(message: JsonObject, message_type: str) -> _Content:
    location = _type_object(message, message_type)
    return _Content(
        MessageKind.LOCATION,
        location=Location(
            latitude=_coordinate(location, "latitude"),
            longitude=_coordinate(location, "longitude"),
            name=_text(location, "name"),
            address=_text(location, "address"),
            url=_text(location, "url"),
        ),
    )


def _coordinate(location: JsonObject, key: str) -> float:
    value = location.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadItem(f"location.{key} is not a number")
    return float(value)


def _contacts_message(message: JsonObject, message_type: str) -> _Content:
    cards = message.get(message_type)
    if not isinstance(cards, list):
        raise _BadItem("contacts is not a list")
    return _Content(MessageKind.CONTACTS, contacts=tuple(_object(card, "contact card") for card in cards))


_INTERACTIVE_KINDS = {"button_reply": MessageKind.BUTTON_REPLY, "list_reply": MessageKind.LIST_REPLY}


def _interactive_message(message: JsonObject, message_type: str) -> _Content:
    interactive = _type_object(message, message_type)
    interactive_type = _text(interactive, "type")
    kind = _INTERACTIVE_KINDS.get(interactive_type or "")
    if interactive_type is None or kind is None:
        # Flows (nfm_reply) and whatever Meta adds next are kept, named after their sub-type.
        return _Content(MessageKind.UNSUPPORTED, original_kind=f"interactive.{interactive_type or 'unknown'}")
    choice = _type_object(interactive, interactive_type)
    title = _text(choice, "title")
    reply_choice = ReplyChoice(id=_text(choice, "id"), title=title, description=_text(choice, "description"))
    # The tapped title doubles as the text, as Twilio's Body does, so keyword rules see it too.
    return _Content(kind, text=title, reply_choice=reply_choice)


def _template_button_message(message: JsonObject, message_type: str) -> _Content:
    button = _type_object(message, message_type)
    label = _text(button, "text")
    return _Content(
        MessageKind.TEMPLATE_BUTTON, text=label, reply_choice=ReplyChoice(id=_text(button, "payload"), title=label)
    )


def _reaction_message(message: JsonObject, message_type: str) -> _Content:
    reaction = _type_object(message, message_type)
    target = _required_text(reaction, "message_id")
    # Meta removes a reaction by sending an empty emoji or none at all.
    return _Content(
        MessageKind.REACTION, reaction=Reaction(target_message_id=target, emoji=_text(reaction, "emoji") or "")
    )


def _unsupported(message: JsonObject, message_type: str) -> _Content:
    details = message.get("unsupported")
    named = details.get("type") if isinstance(details, dict) else None
    original_kind = named if isinstance(named, str) and named else message_type
    return _Content(MessageKind.UNSUPPORTED, original_kind=original_kind)


def _type_object(message: JsonObject, message_type: str) -> JsonObject:
    """The object named after the message's type (``"image": {...}`` for ``"type": "image"``)."""
    return _object(message.get(message_type), message_type)


_CONTENT_READERS: dict[str, Callable[[JsonObject, str], _Content]] = {
    "text": _text_message,
    "image": _media_message,
    "video": _media_message,
    "audio": _media_message,
    "document": _media_message,
    "sticker": _media_message,
    "location": _location_message,
    "contacts": _contacts_message,
    "interactive": _interactive_message,
    "button": _template_button_message,
    "reaction": _reaction_message,
}


def _referral(message: JsonObject) -> Referral | None:
    referral = _optional_object(message, "referral")
    if referral is None:
        return None
    return Referral(
        source_type=_text(referral, "source_type"),
        source_id=_text(referral, "source_id"),
        source_url=_text(referral, "source_url"),
        headline=_text(referral, "headline"),
        body=_text(referral, "body"),
        media_type=_text(referral, "media_type"),
        media_url=_text(referral, "image_url") or _text(referral, "video_url"),
        ctwa_clid=_text(referral, "ctwa_clid"),
    )


# --------------------------------------------------------------------------------------------
# Statuses


_STATUSES = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    # A voice note that was played has necessarily been read.
    "played": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
}


def _status(channel: MetaChannelConfig, status: Any) -> StatusUpdate:
    status = _object(status, "status")
    message_id = _bounded(_required_text(status, "id"), _MAX_ID, "id")
    name = _required_text(status, "status")
    if name not in _STATUSES:
        raise _BadItem(f"unknown status {name!r}")
    recipient_id = _text(status, "recipient_id")
    errors = _error_details(status)
    return StatusUpdate(
        provider=PROVIDER,
        channel=channel.name,
        provider_message_id=MessageId(message_id),
        status=_STATUSES[name],
        timestamp=_unix_time(status.get("timestamp")),
        recipient=_whatsapp_number(recipient_id, "recipient_id") if recipient_id else None,
        error=errors[0] if errors else None,
        raw=status,
    )
