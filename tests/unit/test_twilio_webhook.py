"""Twilio webhook translation: the payloads of PROVIDERS.md B1/B2 in, leadline events out.

Each case is a fixture from ``tests/fixtures/twilio`` sent as Twilio sends it: URL-encoded, signed
with the channel's Auth Token for the public URL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadline.config import ChannelConfig
from leadline.domain.messages import (
    DeliveryStatus,
    InboundMessage,
    Location,
    MediaRef,
    MessageId,
    MessageKind,
    ProviderErrorDetail,
    Referral,
    ReplyChoice,
    StatusUpdate,
)
from leadline.providers.base import RawRequest, TranslatedWebhook, WebhookRejected
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.signature import signature_matches, twilio_signature
from leadline.providers.twilio.webhook import EMPTY_TWIML, TwilioWebhookTranslator

FIXTURES = Path(__file__).parents[1] / "fixtures" / "twilio"

ACCOUNT_SID = "AC00000000000000000000000000000001"
AUTH_TOKEN = "c0ffee00c0ffee00c0ffee00c0ffee00"
PUBLIC_URL = "https://crm.example.com/webhooks/twilio?tenant=acme"
LOCAL_URL = "http://10.0.0.5:8080/webhooks/twilio?tenant=acme"
NOW = datetime(2026, 5, 4, 15, 30, tzinfo=UTC)
CUSTOMER = "+5215512345678"
BUSINESS = "+15550001234"
FORM = "application/x-www-form-urlencoded"

CHANNEL = TwilioChannelConfig(
    name="twilio-main",
    business_number=BUSINESS,
    account_sid=ACCOUNT_SID,
    auth_token=AUTH_TOKEN,  # pydantic turns it into a SecretStr
)

Params = dict[str, str] | list[tuple[str, str]]


def load(name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def request(
    params: Params,
    *,
    signed_url: str | None = PUBLIC_URL,
    public_url: str = PUBLIC_URL,
    token: str = AUTH_TOKEN,
    body: bytes | None = None,
    content_type: str | None = FORM,
    extra_headers: dict[str, str] | None = None,
) -> RawRequest:
    """A request as the API layer hands it over; ``signed_url=None`` sends no signature."""
    headers = {} if content_type is None else {"content-type": content_type}
    if signed_url is not None:
        headers["x-twilio-signature"] = twilio_signature(token, signed_url, params)
    headers.update(extra_headers or {})
    return RawRequest(
        method="POST",
        path="/webhooks/twilio",
        query_string="tenant=acme",
        headers=headers,
        body=urlencode(params).encode() if body is None else body,
        public_url=public_url,
    )


@pytest.fixture
def translator() -> TwilioWebhookTranslator:
    return TwilioWebhookTranslator([CHANNEL], clock=lambda: NOW)


def translate(translator: TwilioWebhookTranslator, params: Params, **kwargs: Any) -> TranslatedWebhook:
    return translator.translate(request(params, **kwargs))


def only_event(result: TranslatedWebhook) -> Any:
    assert result.problems == []
    assert result.unknown_channels == set()
    assert len(result.events) == 1
    return result.events[0]


def rejected(translator: TwilioWebhookTranslator, req: RawRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        translator.translate(req)
    return info.value


def media_url(message_sid: str, media_sid: str) -> str:
    return f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message_sid}/Media/{media_sid}"


def inbound(fixture: str, kind: MessageKind, **fields: Any) -> InboundMessage:
    params = load(fixture)
    defaults: dict[str, Any] = {
        "provider": "twilio",
        "channel": "twilio-main",
        "provider_message_id": MessageId(params["MessageSid"]),
        "sender": CUSTOMER,
        "sender_provider_id": "5215512345678",
        "business_number": BUSINESS,
        "profile_name": "Lucía Ramos",
        "kind": kind,
        "timestamp": NOW,
        "raw": params,
    }
    return InboundMessage(**(defaults | fields))


def single_media(fixture: str, media_sid: str, mime: str, caption: str | None) -> tuple[MediaRef, ...]:
    return (MediaRef(ref=media_url(load(fixture)["MessageSid"], media_sid), mime_type=mime, caption=caption),)


# --------------------------------------------------------------------------------------------
# Incoming messages, one fixture per kind

INBOUND_CASES = [
    pytest.param(inbound("inbound_text", MessageKind.TEXT, text="Hola, ¿tienen envío gratis?"), id="text"),
    pytest.param(
        inbound(
            "inbound_image",
            MessageKind.IMAGE,
            text="Este es el modelo",
            media=single_media(
                "inbound_image", "ME3c4d5e6f708192a3b4c5d6e7f8091a2b", "image/jpeg", "Este es el modelo"
            ),
        ),
        id="image",
    ),
    pytest.param(
        inbound(
            "inbound_video",
            MessageKind.VIDEO,
            text="Así se arma",
            media=single_media("inbound_video", "ME1b2c3d4e5f60718293a4b5c6d7e8f902", "video/mp4", "Así se arma"),
        ),
        id="video",
    ),
    pytest.param(
        inbound(
            "inbound_audio",
            MessageKind.AUDIO,
            media=single_media("inbound_audio", "ME2c3d4e5f60718293a4b5c6d7e8f90124", "audio/ogg", None),
        ),
        id="audio",
    ),
    pytest.param(
        inbound(
            "inbound_document",
            MessageKind.DOCUMENT,
            text="Cotización firmada",
            media=single_media(
                "inbound_document", "ME3d4e5f60718293a4b5c6d7e8f9012346", "application/pdf", "Cotización firmada"
            ),
        ),
        id="document",
    ),
    pytest.param(
        inbound(
            "inbound_sticker",
            MessageKind.STICKER,
            media=single_media("inbound_sticker", "ME4e5f60718293a4b5c6d7e8f901234568", "image/webp", None),
        ),
        id="sticker",
    ),
    pytest.param(
        inbound(
            "inbound_location",
            MessageKind.LOCATION,
            location=Location(
                latitude=19.4326, longitude=-99.1332, name="Oficina Centro", address="Av. Ejemplo 123, CDMX"
            ),
        ),
        id="location",
    ),
    pytest.param(
        inbound(
            "inbound_contacts",
            MessageKind.CONTACTS,
            media=single_media("inbound_contacts", "ME8a9b0c1d2e3f405162738495a6b7c8d0", "text/vcard", None),
        ),
        id="contacts",
    ),
    pytest.param(
        inbound(
            "inbound_button_reply",
            MessageKind.BUTTON_REPLY,
            text="Sí, confirmar",
            reply_choice=ReplyChoice(id="confirm_yes", title="Sí, confirmar"),
            reply_to="MM6f708192a3b4c5d6e7f8091a2b3c4d5e",
        ),
        id="button_reply",
    ),
    pytest.param(
        inbound(
            "inbound_template_button",
            MessageKind.TEMPLATE_BUTTON,
            text="Ver catálogo",
            reply_choice=ReplyChoice(id="show_catalog", title="Ver catálogo"),
            reply_to="MM60718293a4b5c6d7e8f9012345678901",
        ),
        id="template_button",
    ),
    pytest.param(
        inbound(
            "inbound_reply", MessageKind.TEXT, text="¿Y este en talla M?", reply_to="SM8192a3b4c5d6e7f8091a2b3c4d5e6f70"
        ),
        id="reply",
    ),
    pytest.param(
        inbound(
            "inbound_referral",
            MessageKind.TEXT,
            text="Hola, vi su anuncio de envío gratis",
            referral=Referral(
                source_type="ad",
                source_id="120200000000000001",
                source_url="https://fb.me/3cr4Wqqkv",
                headline="Envío gratis esta semana",
                body="Escríbenos por WhatsApp",
                media_type="image",
                media_url=media_url("SM60718293a4b5c6d7e8f90123456789ab", "ME718293a4b5c6d7e8f90123456789abc0"),
                ctwa_clid=load("inbound_referral")["ReferralCtwaClid"],
            ),
        ),
        id="referral",
    ),
    pytest.param(
        inbound("inbound_unknown_type", MessageKind.UNSUPPORTED, text="👍", original_kind="reaction"),
        id="unknown_type_kept_as_unsupported",
    ),
]


@pytest.mark.parametrize("expected", INBOUND_CASES)
def test_incoming_message_is_translated_to_one_inbound_message(
    translator: TwilioWebhookTranslator, expected: InboundMessage
) -> None:
    result = translate(translator, expected.raw)

    assert only_event(result) == expected


def test_the_text_fixture_is_the_wire_example_of_the_reference(translator: TwilioWebhookTranslator) -> None:
    wire = (
        "SmsMessageSid=SM1a2b3c4d5e6f708192a3b4c5d6e7f809&NumMedia=0&ProfileName=Luc%C3%ADa+Ramos&MessageType=text"
        "&SmsSid=SM1a2b3c4d5e6f708192a3b4c5d6e7f809&WaId=5215512345678&SmsStatus=received"
        "&Body=Hola%2C+%C2%BFtienen+env%C3%ADo+gratis%3F&To=whatsapp%3A%2B15550001234&NumSegments=1"
        "&ReferralNumMedia=0&MessageSid=SM1a2b3c4d5e6f708192a3b4c5d6e7f809&AccountSid=AC00000000000000000000000000000001"
        "&From=whatsapp%3A%2B5215512345678&ApiVersion=2010-04-01"
    )
    params = load("inbound_text")
    assert urlencode(params) == wire

    message = only_event(translate(translator, params, body=wire.encode()))

    assert message.text == "Hola, ¿tienen envío gratis?"
    assert message.raw == params


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("inbound_text", MessageKind.TEXT),
        ("inbound_image", MessageKind.IMAGE),
        ("inbound_video", MessageKind.VIDEO),
        ("inbound_audio", MessageKind.AUDIO),
        ("inbound_document", MessageKind.DOCUMENT),
        ("inbound_sticker", MessageKind.IMAGE),  # a webp is all that is left to go on
        ("inbound_contacts", MessageKind.CONTACTS),
        ("inbound_location", MessageKind.LOCATION),
        ("inbound_button_reply", MessageKind.BUTTON_REPLY),
    ],
)
def test_kind_is_inferred_when_message_type_is_absent(
    translator: TwilioWebhookTranslator, fixture: str, kind: MessageKind
) -> None:
    params = load(fixture)
    del params["MessageType"]

    message = only_event(translate(translator, params))

    assert message.kind is kind
    assert message.original_kind is None


def test_interactive_reply_without_a_button_is_unsupported_not_dropped(translator: TwilioWebhookTranslator) -> None:
    params = load("inbound_button_reply")
    del params["ButtonPayload"], params["ButtonText"]

    message = only_event(translate(translator, params))

    assert message.kind is MessageKind.UNSUPPORTED
    assert message.original_kind == "interactive"
    assert message.text == "Sí, confirmar"


@pytest.mark.parametrize(("forwarded", "frequently"), [("true", "false"), ("false", "true"), ("True", "")])
def test_forwarded_messages_are_marked(translator: TwilioWebhookTranslator, forwarded: str, frequently: str) -> None:
    params = load("inbound_text") | {"Forwarded": forwarded, "FrequentlyForwarded": frequently}

    assert only_event(translate(translator, params)).forwarded is True


def test_every_media_item_is_kept_and_the_body_captions_the_first(translator: TwilioWebhookTranslator) -> None:
    params = load("inbound_image") | {
        "NumMedia": "2",
        "MediaUrl1": media_url("MM2b3c4d5e6f708192a3b4c5d6e7f8091a", "ME0000000000000000000000000000000b"),
        "MediaContentType1": "image/png",
    }

    message = only_event(translate(translator, params))

    assert [m.mime_type for m in message.media] == ["image/jpeg", "image/png"]
    assert [m.caption for m in message.media] == ["Este es el modelo", None]


def test_repeated_parameter_names_are_kept_in_raw(translator: TwilioWebhookTranslator) -> None:
    params = [*load("inbound_text").items(), ("Extra", "a"), ("Extra", "b")]

    message = only_event(translate(translator, params))

    assert message.raw["Extra"] == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Status callbacks

STATUS_CASES = [
    pytest.param("status_queued", DeliveryStatus.ACCEPTED, None, id="queued"),
    pytest.param("status_sent", DeliveryStatus.SENT, None, id="sent"),
    pytest.param("status_delivered", DeliveryStatus.DELIVERED, None, id="delivered"),
    pytest.param("status_read", DeliveryStatus.READ, None, id="read"),
    pytest.param("status_undelivered", DeliveryStatus.FAILED, ProviderErrorDetail(code="63016"), id="undelivered"),
    pytest.param("status_failed", DeliveryStatus.FAILED, ProviderErrorDetail(code="63024"), id="failed"),
]


@pytest.mark.parametrize(("fixture", "status", "error"), STATUS_CASES)
def test_status_callback_is_translated_to_one_status_update(
    translator: TwilioWebhookTranslator, fixture: str, status: DeliveryStatus, error: ProviderErrorDetail | None
) -> None:
    params = load(fixture)

    update = only_event(translate(translator, params))

    assert update == StatusUpdate(
        provider="twilio",
        channel="twilio-main",
        provider_message_id=MessageId(params["MessageSid"]),
        status=status,
        timestamp=NOW,
        recipient=CUSTOMER,
        error=error,
        raw=params,
    )


@pytest.mark.parametrize(
    ("message_status", "status"),
    [
        ("accepted", DeliveryStatus.ACCEPTED),
        ("queued", DeliveryStatus.ACCEPTED),
        ("scheduled", DeliveryStatus.ACCEPTED),
        ("sending", DeliveryStatus.SENDING),
        ("sent", DeliveryStatus.SENT),
        ("delivered", DeliveryStatus.DELIVERED),
        ("read", DeliveryStatus.READ),
        ("failed", DeliveryStatus.FAILED),
        ("undelivered", DeliveryStatus.FAILED),
        ("canceled", DeliveryStatus.CANCELED),
    ],
)
def test_every_twilio_status_maps_onto_the_ladder(
    translator: TwilioWebhookTranslator, message_status: str, status: DeliveryStatus
) -> None:
    params = load("status_sent") | {"MessageStatus": message_status, "SmsStatus": message_status}

    assert only_event(translate(translator, params)).status is status


@pytest.mark.parametrize("message_status", ["receiving", "received", "partially_delivered", "unknown", ""])
def test_status_leadline_does_not_record_is_a_problem_not_an_error(
    translator: TwilioWebhookTranslator, message_status: str
) -> None:
    params = load("status_sent") | {"MessageStatus": message_status}
    del params["SmsStatus"]

    result = translate(translator, params)

    assert result.events == []
    assert len(result.problems) == 1
    assert result.problems[0].channel == "twilio-main"
    assert result.problems[0].item == params
    assert result.reply.status == 200


def test_error_title_comes_from_error_message_or_channel_status_message(translator: TwilioWebhookTranslator) -> None:
    with_message = load("status_failed") | {"ErrorMessage": "Invalid recipient"}
    with_channel_message = load("status_failed") | {"ChannelStatusMessage": "Not a WhatsApp user"}

    assert only_event(translate(translator, with_message)).error == ProviderErrorDetail(
        code="63024", title="Invalid recipient"
    )
    assert only_event(translate(translator, with_channel_message)).error == ProviderErrorDetail(
        code="63024", title="Not a WhatsApp user"
    )


@pytest.mark.parametrize("code", ["0", ""])
def test_error_code_zero_or_empty_is_no_error(translator: TwilioWebhookTranslator, code: str) -> None:
    params = load("status_delivered") | {"ErrorCode": code}

    assert only_event(translate(translator, params)).error is None


def test_masked_recipient_is_left_unknown(translator: TwilioWebhookTranslator) -> None:
    params = load("status_read") | {"To": "whatsapp:+52155123XXXXX"}

    update = only_event(translate(translator, params))

    assert update.recipient is None
    assert update.status is DeliveryStatus.READ


# --------------------------------------------------------------------------------------------
# The reply Twilio gets


@pytest.mark.parametrize("fixture", ["inbound_text", "status_read", "status_undelivered"])
def test_twilio_gets_empty_twiml(translator: TwilioWebhookTranslator, fixture: str) -> None:
    reply = translate(translator, load(fixture)).reply

    assert reply.status == 200
    assert reply.content_type == "text/xml"
    assert reply.body == b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>' == EMPTY_TWIML


def test_handshake_is_refused(translator: TwilioWebhookTranslator) -> None:
    with pytest.raises(WebhookRejected) as info:
        translator.handshake(request({}, signed_url=None))

    assert (info.value.status, info.value.code) == (405, "method_not_allowed")


# --------------------------------------------------------------------------------------------
# Signatures


def test_reference_worked_examples() -> None:
    token = "12345678901234567890123456789012"
    params = {
        "AccountSid": "AC00000000000000000000000000000001",
        "Body": "Hola",
        "From": "whatsapp:+5215512345678",
        "MessageSid": "SM11111111111111111111111111111111",
        "To": "whatsapp:+15550001234",
    }
    url = "https://bot.example.com/twilio/inbound?tenant=acme"
    url_with_port = "https://bot.example.com:443/twilio/inbound?tenant=acme"

    assert twilio_signature(token, url, params) == "OHqb35qzNpDVnkQdAKtd0edmaM8="
    assert twilio_signature(token, url_with_port, list(params.items())) == "ZwVQ9xFVo4hNz9yJC3Mvupf79h8="
    # Twilio signs either spelling, so each URL accepts both signatures.
    for checked_url in (url, url_with_port):
        assert signature_matches(token, checked_url, params, "OHqb35qzNpDVnkQdAKtd0edmaM8=")
        assert signature_matches(token, checked_url, params, "ZwVQ9xFVo4hNz9yJC3Mvupf79h8=")
    assert not signature_matches(token, url, params | {"Body": "Hola!"}, "OHqb35qzNpDVnkQdAKtd0edmaM8=")
    assert not signature_matches(token, url, params, None)
    assert not signature_matches(token, url, params, "")


def test_repeated_names_are_all_signed() -> None:
    url = "https://bot.example.com/twilio"
    pairs = [("A", "1"), ("B", "x"), ("A", "2")]

    assert twilio_signature(AUTH_TOKEN, url, pairs) != twilio_signature(AUTH_TOKEN, url, {"A": "1", "B": "x"})
    assert signature_matches(
        AUTH_TOKEN, url, pairs, twilio_signature(AUTH_TOKEN, url, [("A", "2"), ("A", "1"), ("B", "x")])
    )


def test_correctly_signed_request_is_accepted(translator: TwilioWebhookTranslator) -> None:
    assert len(translate(translator, load("inbound_text")).events) == 1


@pytest.mark.parametrize("fixture", ["inbound_text", "status_read"])
def test_missing_signature_is_401(translator: TwilioWebhookTranslator, fixture: str) -> None:
    error = rejected(translator, request(load(fixture), signed_url=None))

    assert (error.status, error.code, error.channel) == (401, "missing_signature", "twilio-main")


def test_empty_signature_is_401(translator: TwilioWebhookTranslator) -> None:
    error = rejected(
        translator, request(load("inbound_text"), signed_url=None, extra_headers={"x-twilio-signature": ""})
    )

    assert (error.status, error.code) == (401, "missing_signature")


def test_signature_with_another_token_is_403_and_names_no_secret(translator: TwilioWebhookTranslator) -> None:
    other_token = "0123456789abcdef0123456789abcdef"

    error = rejected(translator, request(load("status_read"), token=other_token))

    assert (error.status, error.code, error.channel) == (403, "bad_signature", "twilio-main")
    assert AUTH_TOKEN not in f"{error.reason} {error.message}"
    assert other_token not in f"{error.reason} {error.message}"


def test_tampered_body_is_403(translator: TwilioWebhookTranslator) -> None:
    params = load("inbound_text")
    tampered = urlencode(params | {"Body": "Quiero cancelar"}).encode()

    error = rejected(translator, request(params, body=tampered))

    assert (error.status, error.code) == (403, "bad_signature")


def test_a_repeated_parameter_left_out_of_the_signature_is_403(translator: TwilioWebhookTranslator) -> None:
    pairs = [*load("inbound_text").items(), ("Extra", "a"), ("Extra", "b")]
    signed_first_value_only = twilio_signature(AUTH_TOKEN, PUBLIC_URL, dict(pairs[:-1]))

    req = request(pairs, extra_headers={"x-twilio-signature": signed_first_value_only})

    assert rejected(translator, req).status == 403


def test_behind_a_proxy_the_public_url_is_checked_not_the_local_one(translator: TwilioWebhookTranslator) -> None:
    params = load("inbound_text")

    assert len(translate(translator, params, signed_url=PUBLIC_URL, public_url=PUBLIC_URL).events) == 1
    error = rejected(translator, request(params, signed_url=LOCAL_URL, public_url=PUBLIC_URL))
    assert error.status == 403


def test_signature_over_the_default_port_is_accepted(translator: TwilioWebhookTranslator) -> None:
    signed = "https://crm.example.com:443/webhooks/twilio?tenant=acme"

    assert len(translate(translator, load("inbound_text"), signed_url=signed).events) == 1


def test_shared_key_signature_is_refused_with_a_reason(translator: TwilioWebhookTranslator) -> None:
    settings_header = {"x-twilio-webhooks-signature-settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}

    error = rejected(translator, request(load("inbound_text"), token="a-shared-key", extra_headers=settings_header))

    assert error.status == 403
    assert "SharedKey" in error.reason


# --------------------------------------------------------------------------------------------
# Channels


@pytest.mark.parametrize(
    ("fixture", "change", "address"),
    [
        ("inbound_text", {"To": "whatsapp:+15559990000"}, "whatsapp:+15559990000"),
        ("inbound_text", {"AccountSid": "AC00000000000000000000000000000002"}, "whatsapp:+15550001234"),
        ("inbound_text", {"To": "whatsapp:not-a-number"}, "whatsapp:not-a-number"),
        ("status_read", {"From": "whatsapp:+15559990000"}, "whatsapp:+15559990000"),
    ],
    ids=["other_number", "other_account", "not_a_number", "status_from_other_number"],
)
def test_unknown_channel_is_reported_without_checking_a_signature(
    translator: TwilioWebhookTranslator, fixture: str, change: dict[str, str], address: str
) -> None:
    result = translator.translate(request(load(fixture) | change, signed_url=None))

    assert result.unknown_channels == {address}
    assert result.events == []
    assert result.problems == []


def test_for_channels_keeps_only_twilio_channels() -> None:
    other = ChannelConfig(name="meta-main", provider="meta", business_number="+15550009999")
    translator = TwilioWebhookTranslator.for_channels([other, CHANNEL])

    assert len(translator.translate(request(load("inbound_text"))).events) == 1
    params = load("inbound_text") | {"To": "whatsapp:+15550009999"}
    assert translator.translate(request(params)).unknown_channels == {"whatsapp:+15550009999"}


def test_two_channels_on_one_sender_are_a_configuration_error() -> None:
    twin = CHANNEL.model_copy(update={"name": "twilio-twin"})

    with pytest.raises(ValueError, match="twilio-twin"):
        TwilioWebhookTranslator([CHANNEL, twin])


# --------------------------------------------------------------------------------------------
# Malformed requests and items


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfeMessageSid=SM1", FORM),
        (b"MessageSid=SM1&Body=%FF", FORM),
        (b"MessageSid=SM1&Body", FORM),
        (b"MessageSid=SM1&&Body=x", FORM),
        (b'{"MessageSid": "SM1"}', "application/json"),
        (b"MessageSid=SM1", f"{FORM}; charset=iso-8859-1"),
        (b"", FORM),
    ],
    ids=["not_utf8", "bad_percent_escape", "field_without_equals", "empty_field", "json", "latin1", "empty"],
)
def test_unreadable_body_is_400(translator: TwilioWebhookTranslator, body: bytes, content_type: str) -> None:
    error = rejected(translator, request({}, signed_url=None, body=body, content_type=content_type))

    assert (error.status, error.code) == (400, "malformed_body")


@pytest.mark.parametrize("content_type", [None, f"{FORM}; charset=UTF-8", "Application/X-WWW-Form-URLEncoded"])
def test_form_content_type_variants_are_read(translator: TwilioWebhookTranslator, content_type: str | None) -> None:
    assert len(translate(translator, load("inbound_text"), content_type=content_type).events) == 1


@pytest.mark.parametrize("missing", ["AccountSid", "To"])
def test_form_without_what_finds_the_channel_is_400(translator: TwilioWebhookTranslator, missing: str) -> None:
    params = load("inbound_text")
    del params[missing]

    error = rejected(translator, request(params))

    assert (error.status, error.code, error.channel) == (400, "malformed_body", None)


@pytest.mark.parametrize("fixture", ["inbound_text", "status_read"])
def test_signed_form_without_message_sid_is_400(translator: TwilioWebhookTranslator, fixture: str) -> None:
    params = load(fixture)
    del params["MessageSid"]

    error = rejected(translator, request(params))

    assert (error.status, error.code, error.channel) == (400, "malformed_body", "twilio-main")


@pytest.mark.parametrize(
    ("fixture", "change"),
    [
        ("inbound_text", {"From": "whatsapp:hello"}),
        ("inbound_text", {"From": "whatsapp:+1800FLOWERS"}),
        ("inbound_text", {"From": ""}),
        ("inbound_location", {"Latitude": "north"}),
        ("inbound_location", {"Longitude": "inf"}),
        ("inbound_location", {"Latitude": "91"}),
        ("inbound_image", {"NumMedia": "two"}),
        ("inbound_image", {"NumMedia": "2"}),
    ],
    ids=[
        "from_not_a_number",
        "from_with_letters",
        "from_empty",
        "latitude_not_a_number",
        "longitude_infinite",
        "latitude_out_of_range",
        "num_media_not_a_number",
        "num_media_more_than_urls",
    ],
)
def test_untranslatable_item_is_a_problem_and_twilio_gets_200(
    translator: TwilioWebhookTranslator, fixture: str, change: dict[str, str]
) -> None:
    params = load(fixture) | change

    result = translate(translator, params)

    assert result.events == []
    assert len(result.problems) == 1
    assert result.problems[0].channel == "twilio-main"
    assert result.problems[0].item == params
    assert result.reply.body == EMPTY_TWIML


def test_location_without_coordinates_is_a_problem(translator: TwilioWebhookTranslator) -> None:
    params = load("inbound_location")
    del params["Latitude"], params["Longitude"]

    assert len(translate(translator, params).problems) == 1


# --------------------------------------------------------------------------------------------
# Whatever arrives, the answer is events, problems or a 4xx

KNOWN_PARAMS = [
    "Body",
    "NumMedia",
    "MediaUrl0",
    "MediaContentType0",
    "MessageType",
    "Latitude",
    "Longitude",
    "Label",
    "ButtonPayload",
    "ButtonText",
    "Forwarded",
    "ReferralMediaContentType",
    "ReferralCtwaClid",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
    "From",
    "To",
    "WaId",
]


def _outcome(translator: TwilioWebhookTranslator, req: RawRequest) -> None:
    try:
        translator.translate(req)
    except WebhookRejected as exc:
        assert 400 <= exc.status < 500


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(body=st.binary(max_size=400), content_type=st.sampled_from([FORM, None, "text/plain"]))
def test_arbitrary_bytes_never_raise_anything_but_a_rejection(
    translator: TwilioWebhookTranslator, body: bytes, content_type: str | None
) -> None:
    _outcome(translator, request({}, signed_url=None, body=body, content_type=content_type))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(
    base=st.sampled_from(sorted(p.stem for p in FIXTURES.glob("*.json"))),
    changes=st.dictionaries(st.sampled_from(KNOWN_PARAMS), st.text(max_size=30), max_size=6),
    extra=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3),
)
def test_any_correctly_signed_form_never_raises_anything_but_a_rejection(
    translator: TwilioWebhookTranslator, base: str, changes: dict[str, str], extra: list[tuple[str, str]]
) -> None:
    pairs = [*(load(base) | changes).items(), *extra]

    _outcome(translator, request(pairs))
