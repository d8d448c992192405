"""Twilio's WhatsApp webhooks (incoming messages and status callbacks) as leadline events.

A request is handled in this order, each step needing the one before:

1. Read the body as a UTF-8 ``application/x-www-form-urlencoded`` form; anything else is a 400.
2. Find the channel from ``AccountSid`` and the business address (``To`` of an incoming message,
   ``From`` of a status callback). Without them no channel, hence no Auth Token, can be chosen: 400.
   An address no channel owns is reported in ``unknown_channels`` and nothing is verified against a
   guessed token.
3. Check ``X-Twilio-Signature`` with that channel's Auth Token: 401 when missing, 403 when wrong.
4. Only then is the content trusted: a missing ``MessageSid`` is a 400; a value that cannot be
   translated (a ``From`` that is no phone number, a status leadline does not record) becomes an
   :class:`ItemProblem`, and Twilio still gets its 200.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from leadline.config import ChannelConfig
from leadline.domain.messages import (
    DeliveryStatus,
    InboundMessage,
    JsonObject,
    Location,
    MediaRef,
    MessageId,
    MessageKind,
    ProviderErrorDetail,
    Referral,
    ReplyChoice,
    StatusUpdate,
)
from leadline.providers.base import ItemProblem, RawRequest, TranslatedWebhook, WebhookRejected, WebhookReply
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.signature import signature_matches

PROVIDER = "twilio"

EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

_SIGNATURE_HEADER = "x-twilio-signature"
# Present when a Webhooks Rule signs with a SharedKey instead of the Auth Token (public beta).
_SIGNATURE_SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"

_FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Twilio sends a few dozen parameters; the cap only bounds the work a hostile body can cause.
_MAX_FORM_FIELDS = 1000
# Twilio spells addresses ``whatsapp:+<E.164>``, already validated on its side. Only that syntax is
# checked: phonenumbers' plausibility rules reject real WhatsApp ids (Mexico's legacy ``+521...``
# mobiles) and turn letters into digits (a masked ``+52155123XXXXX`` would become a wrong number).
_ADDRESS = re.compile(r"(?:whatsapp:)?(\+[1-9][0-9]{6,14})", re.IGNORECASE)
# Upper bounds on what leadline keeps of an id (the columns of leadline.store.tables), far above Twilio's
# real values (a SID is 34 characters, an error code 5 digits): a longer one is not Twilio's.
_MAX_SID = 128
_MAX_WA_ID = 64
_MAX_ERROR_CODE = 32
# Twilio allows up to 10 media per message; three digits is already far beyond that.
_NUM_MEDIA = re.compile(r"[0-9]{1,3}")

_KIND_BY_MESSAGE_TYPE = {
    "text": MessageKind.TEXT,
    "image": MessageKind.IMAGE,
    "video": MessageKind.VIDEO,
    "audio": MessageKind.AUDIO,
    "document": MessageKind.DOCUMENT,
    "sticker": MessageKind.STICKER,
    "location": MessageKind.LOCATION,
    "contacts": MessageKind.CONTACTS,
    "interactive": MessageKind.BUTTON_REPLY,
    "button": MessageKind.TEMPLATE_BUTTON,
}

_VCARD_TYPES = frozenset({"text/vcard", "text/x-vcard", "text/directory"})

_STATUS_BY_MESSAGE_STATUS = {
    "accepted": DeliveryStatus.ACCEPTED,
    "queued": DeliveryStatus.ACCEPTED,
    "scheduled": DeliveryStatus.ACCEPTED,
    "sending": DeliveryStatus.SENDING,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
    "undelivered": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.CANCELED,
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TwilioWebhookTranslator:
    """Verifies and translates the webhooks Twilio sends for the configured Twilio channels."""

    def __init__(self, channels: Sequence[TwilioChannelConfig], *, clock: Callable[[], datetime] = _utc_now):
        """``clock`` gives the receive time that becomes each event's timestamp (Twilio sends none)."""
        self._channels: dict[tuple[str, str], TwilioChannelConfig] = {}
        for channel in channels:
            key = (channel.account_sid, channel.business_number)
            other = self._channels.get(key)
            if other is not None:
                # Two channels on one sender would make every webhook's channel a coin toss.
                raise ValueError(
                    f"twilio channels {other.name!r} and {channel.name!r} both use {channel.business_number} "
                    f"under account {channel.account_sid}"
                )
            self._channels[key] = channel
        self._clock = clock

    @classmethod
    def for_channels(cls, channels: Sequence[ChannelConfig]) -> TwilioWebhookTranslator:
        """A translator for the Twilio channels among ``channels`` (others are ignored)."""
        return cls([c for c in channels if isinstance(c, TwilioChannelConfig)])

    def handshake(self, request: RawRequest) -> WebhookReply:
        """Twilio has no subscription handshake: always refused."""
        raise WebhookRejected(405, "method_not_allowed", "Twilio webhooks are POST requests only")

    def translate(self, request: RawRequest) -> TranslatedWebhook:
        form = _read_form(request)
        is_status_callback = form.first("MessageStatus") is not None and form.first("SmsStatus") != "received"
        address_param = "From" if is_status_callback else "To"
        account_sid = form.first("AccountSid")
        address = form.first(address_param)
        if not account_sid:
            raise WebhookRejected(400, "malformed_body", "the form has no AccountSid")
        if not address:
            raise WebhookRejected(400, "malformed_body", f"the form has no {address_param}")

        channel = self._channel_for(account_sid, address)
        if channel is None:
            # Matching needs both AccountSid and the number, so a known number under another
            # account is reported unknown too: its Auth Token must not vouch for another account.
            return TranslatedWebhook(unknown_channels={address}, reply=_twiml_reply())

        _verify_signature(request, channel, form)
        # The signature covers the values as sent; what is kept has no NUL (%00), which PostgreSQL
        # text cannot hold and no WhatsApp message needs.
        form = form.without_nul()

        message_sid = form.first("MessageSid")
        if not message_sid:
            raise WebhookRejected(400, "malformed_body", "the form has no MessageSid", channel=channel.name)
        if len(message_sid) > _MAX_SID:
            raise WebhookRejected(400, "malformed_body", "the MessageSid is not a message SID", channel=channel.name)

        result = TranslatedWebhook(reply=_twiml_reply())
        now = self._clock()
        try:
            if is_status_callback:
                result.events.append(_status_update(channel, form, now))
            else:
                result.events.append(_inbound_message(channel, form, now))
        except _BadItem as exc:
            result.problems.append(ItemProblem(channel=channel.name, reason=str(exc), item=form.as_raw()))
        return result

    def _channel_for(self, account_sid: str, address: str) -> TwilioChannelConfig | None:
        number = _e164(address)
        return None if number is None else self._channels.get((account_sid, number))


def _twiml_reply() -> WebhookReply:
    # Replies go out through the REST API, so the TwiML answer asks Twilio to do nothing.
    return WebhookReply(200, EMPTY_TWIML, "text/xml")


# --------------------------------------------------------------------------------------------
# Reading and verifying the form


@dataclass(frozen=True, slots=True)
class _Form:
    """The form's pairs in wire order; names may repeat, and the signature covers every value."""

    pairs: tuple[tuple[str, str], ...]

    def first(self, name: str) -> str | None:
        for key, value in self.pairs:
            if key == name:
                return value
        return None

    def text(self, name: str) -> str | None:
        """The value, or None when absent or empty (Twilio sends ``Body=`` for location messages)."""
        return self.first(name) or None

    def without_nul(self) -> _Form:
        return _Form(tuple((key.replace("\x00", ""), value.replace("\x00", "")) for key, value in self.pairs))

    def as_raw(self) -> JsonObject:
        raw: dict[str, Any] = {}
        for key, value in self.pairs:
            if key not in raw:
                raw[key] = value
            elif isinstance(raw[key], list):
                raw[key].append(value)
            else:
                raw[key] = [raw[key], value]
        return raw


def _read_form(request: RawRequest) -> _Form:
    content_type = request.header("content-type")
    if content_type is not None:
        media_type, *params = (part.strip().lower() for part in content_type.split(";"))
        if media_type != _FORM_CONTENT_TYPE:
            message = f"expected {_FORM_CONTENT_TYPE}, got {media_type!r}"
            raise WebhookRejected(400, "malformed_body", message)
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
                raise WebhookRejected(400, "malformed_body", "the form must be UTF-8")
    try:
        text = request.body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            # Twilio never sends empty or '='-less fields, so one means the body is not Twilio's form.
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError as exc:  # UnicodeDecodeError included
        raise WebhookRejected(400, "malformed_body", "the body is not a UTF-8 form", reason=str(exc)) from None
    return _Form(tuple(pairs))


def _verify_signature(request: RawRequest, channel: TwilioChannelConfig, form: _Form) -> None:
    header = request.header(_SIGNATURE_HEADER)
    if not header:
        raise WebhookRejected(401, "missing_signature", "X-Twilio-Signature is missing", channel=channel.name)
    if signature_matches(channel.auth_token.get_secret_value(), request.public_url, form.pairs, header):
        return
    reason = f"X-Twilio-Signature does not match the Auth Token of channel {channel.name} for {request.public_url}"
    if request.header(_SIGNATURE_SETTINGS_HEADER):
        reason += (
            "; the request was signed with a Webhooks SharedKey"
            " (X-Twilio-Webhooks-Signature-Settings), which leadline does not hold"
        )
    raise WebhookRejected(403, "bad_signature", "X-Twilio-Signature is not valid", channel=channel.name, reason=reason)


# --------------------------------------------------------------------------------------------
# Translating a verified form


class _BadItem(Exception):
    """The form is Twilio's and verified, but this value cannot become an event."""


def _inbound_message(channel: TwilioChannelConfig, form: _Form, now: datetime) -> InboundMessage:
    sender = _e164(form.first("From"))
    if sender is None:
        raise _BadItem("the message's From is missing or not a whatsapp:+E.164 address")

    body = form.text("Body")
    media = _media(form, caption=body)
    kind, original_kind = _kind(form, media)
    location = _location(form)
    if kind is MessageKind.LOCATION and location is None:
        raise _BadItem("a location message without Latitude and Longitude")

    return InboundMessage(
        provider=PROVIDER,
        channel=channel.name,
        provider_message_id=MessageId(form.first("MessageSid") or ""),
        sender=sender,
        sender_provider_id=_wa_id(form),
        business_number=channel.business_number,
        profile_name=form.text("ProfileName"),
        kind=kind,
        original_kind=original_kind,
        timestamp=now,
        text=body,
        media=media,
        location=location,
        reply_choice=_reply_choice(form),
        reply_to=form.text("OriginalRepliedMessageSid"),
        forwarded=_is_true(form.first("Forwarded")) or _is_true(form.first("FrequentlyForwarded")),
        referral=_referral(form),
        raw=form.as_raw(),
    )


def _wa_id(form: _Form) -> str | None:
    wa_id = form.text("WaId")
    if wa_id is not None and len(wa_id) > _MAX_WA_ID:
        raise _BadItem(f"WaId is longer than {_MAX_WA_ID} characters")
    return wa_id


def _kind(form: _Form, media: tuple[MediaRef, ...]) -> tuple[MessageKind, str | None]:
    """The kind, and Twilio's own name for it when leadline has no equivalent."""
    message_type = form.text("MessageType")
    if message_type is not None:
        kind = _KIND_BY_MESSAGE_TYPE.get(message_type.strip().lower())
        if kind is MessageKind.BUTTON_REPLY and _reply_choice(form) is None:
            # An interactive reply that is not a button (a list pick, a flow) has no mapping we can verify.
            return MessageKind.UNSUPPORTED, message_type
        if kind is None:
            # Includes reactions: how Twilio delivers them is not documented, so nothing is guessed.
            return MessageKind.UNSUPPORTED, message_type
        return kind, None
    # Older payloads have no MessageType; the other parameters still tell the kind.
    if media:
        return _kind_of_mime(media[0].mime_type), None
    if form.first("Latitude") is not None:
        return MessageKind.LOCATION, None
    if form.first("ButtonPayload") is not None:
        return MessageKind.BUTTON_REPLY, None
    return MessageKind.TEXT, None


def _kind_of_mime(mime_type: str | None) -> MessageKind:
    mime = (mime_type or "").split(";")[0].strip().lower()
    major = mime.partition("/")[0]
    if major == "image":
        return MessageKind.IMAGE
    if major == "video":
        return MessageKind.VIDEO
    if major == "audio":
        return MessageKind.AUDIO
    if mime in _VCARD_TYPES:
        return MessageKind.CONTACTS
    return MessageKind.DOCUMENT


def _media(form: _Form, caption: str | None) -> tuple[MediaRef, ...]:
    num_media = form.first("NumMedia")
    if not num_media:
        return ()
    if not _NUM_MEDIA.fullmatch(num_media):
        raise _BadItem("NumMedia is not a small whole number")
    refs = []
    for index in range(int(num_media)):
        url = form.text(f"MediaUrl{index}")
        if url is None:
            raise _BadItem(f"NumMedia is {num_media} but MediaUrl{index} is missing")
        refs.append(
            MediaRef(
                ref=url,
                mime_type=form.text(f"MediaContentType{index}"),
                # Twilio has one Body per message; it captions the message, shown with its first media.
                caption=caption if index == 0 else None,
            )
        )
    return tuple(refs)


def _location(form: _Form) -> Location | None:
    latitude, longitude = form.first("Latitude"), form.first("Longitude")
    if latitude is None and longitude is None:
        return None
    if latitude is None or longitude is None:
        raise _BadItem("a location needs both Latitude and Longitude")
    try:
        lat, lon = float(latitude), float(longitude)
    except ValueError:
        raise _BadItem("Latitude or Longitude is not a number") from None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise _BadItem("Latitude or Longitude is out of range")
    return Location(latitude=lat, longitude=lon, name=form.text("Label"), address=form.text("Address"))


def _reply_choice(form: _Form) -> ReplyChoice | None:
    payload, title = form.text("ButtonPayload"), form.text("ButtonText")
    if payload is None and title is None:
        return None
    return ReplyChoice(id=payload, title=title)


def _referral(form: _Form) -> Referral | None:
    fields = {
        "ctwa_clid": form.text("ReferralCtwaClid"),
        "source_id": form.text("ReferralSourceId"),
        "source_type": form.text("ReferralSourceType"),
        "source_url": form.text("ReferralSourceUrl"),
        "headline": form.text("ReferralHeadline"),
        "body": form.text("ReferralBody"),
        "media_url": form.text("ReferralMediaUrl"),
    }
    content_type = form.text("ReferralMediaContentType")
    # ReferralNumMedia=0 rides along on every message, so only these fields signal an ad click.
    if content_type is None and all(value is None for value in fields.values()):
        return None
    media_type = None
    if content_type is not None:
        media_type = content_type.partition("/")[0].strip().lower() or None
    return Referral(media_type=media_type, **fields)


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _status_update(channel: TwilioChannelConfig, form: _Form, now: datetime) -> StatusUpdate:
    message_status = form.first("MessageStatus") or ""
    status = _STATUS_BY_MESSAGE_STATUS.get(message_status.strip().lower())
    if status is None:
        # receiving, received, partially_delivered or a status added later: nothing leadline tracks.
        raise _BadItem(f"MessageStatus {message_status!r} is not a status leadline records")
    return StatusUpdate(
        provider=PROVIDER,
        channel=channel.name,
        provider_message_id=MessageId(form.first("MessageSid") or ""),
        status=status,
        timestamp=now,
        # None when masked (Twilio may hide digits); the message id still identifies the recipient.
        recipient=_e164(form.first("To")),
        error=_error(form),
        raw=form.as_raw(),
    )


def _error(form: _Form) -> ProviderErrorDetail | None:
    code = form.text("ErrorCode")
    # 0 is no Twilio error code; read it as "no error" rather than invent a failure.
    if code is None or code.strip() == "0":
        return None
    if len(code.strip()) > _MAX_ERROR_CODE:
        raise _BadItem(f"ErrorCode is longer than {_MAX_ERROR_CODE} characters")
    return ProviderErrorDetail(
        code=code.strip(),
        title=form.text("ErrorMessage") or form.text("ChannelStatusMessage"),
    )


def _e164(address: str | None) -> str | None:
    """The E.164 number in a Twilio address (``whatsapp:+15550001234``), or None if there is none."""
    match = _ADDRESS.fullmatch(address.strip()) if address else None
    return match.group(1) if match else None
