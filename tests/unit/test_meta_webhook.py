"""The Meta webhook translator, driven by the payloads of ``tests/fixtures/meta``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from leadline.config import ChannelConfig
from leadline.domain.messages import (
    DeliveryStatus,
    InboundEvent,
    InboundMessage,
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
from leadline.providers.base import RawRequest, TranslatedWebhook, WebhookRejected
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.signature import meta_signature, signature_matches
from leadline.providers.meta.webhook import MetaWebhookTranslator

FIXTURES = Path(__file__).parents[1] / "fixtures" / "meta"

APP_SECRET = "main-app-secret-0123456789abcdef"
OTHER_APP_SECRET = "other-app-secret-fedcba9876543210"
VERIFY_TOKEN = "main-verify-token"

MAIN = MetaChannelConfig(
    name="meta-main",
    business_number="+15550001234",
    phone_number_id="420000000000002",
    waba_id="310000000000001",
    app_secret=SecretStr(APP_SECRET),
    verify_token=SecretStr(VERIFY_TOKEN),
)
# A second number of the same Meta app, so it shares the app secret.
SECOND = MetaChannelConfig(
    name="meta-second",
    business_number="+15550009999",
    phone_number_id="420000000000009",
    waba_id="310000000000009",
    app_secret=SecretStr(APP_SECRET),
    verify_token=SecretStr("second-verify-token"),
)
# The same number as SECOND, but subscribed through another Meta app with its own secret.
SECOND_OTHER_APP = SECOND.model_copy(update={"app_secret": SecretStr(OTHER_APP_SECRET)})

CUSTOMER = "+5215512345678"
CUSTOMER_WA_ID = "5215512345678"


def fixture_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def post(body: bytes, *, secret: str | None = APP_SECRET, signature: str | None = None) -> RawRequest:
    headers = {"content-type": "application/json"}
    if signature is None and secret is not None:
        signature = meta_signature(secret, body)
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    return RawRequest(
        method="POST",
        path="/webhooks/meta",
        query_string="",
        headers=headers,
        body=body,
        public_url="https://crm.example.com/webhooks/meta",
    )


def get(query_string: str) -> RawRequest:
    return RawRequest(
        method="GET",
        path="/webhooks/meta",
        query_string=query_string,
        headers={},
        body=b"",
        public_url="https://crm.example.com/webhooks/meta",
    )


def translator(*channels: ChannelConfig) -> MetaWebhookTranslator:
    return MetaWebhookTranslator.for_channels(channels or (MAIN, SECOND))


def translate_fixture(name: str, *channels: ChannelConfig) -> TranslatedWebhook:
    return translator(*channels).translate(post(fixture_body(name)))


def translate_fixture_body(body: bytes) -> TranslatedWebhook:
    return translator().translate(post(body))


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def message(wamid: str, seconds: int, kind: MessageKind, **fields: Any) -> InboundMessage:
    """What Lucía's message to the main number looks like, with ``raw`` left out."""
    defaults: dict[str, Any] = {
        "provider": "meta",
        "channel": "meta-main",
        "sender": CUSTOMER,
        "business_number": "+15550001234",
        "sender_provider_id": CUSTOMER_WA_ID,
        "profile_name": "Lucía Ramos",
    }
    return InboundMessage(provider_message_id=MessageId(wamid), timestamp=at(seconds), kind=kind, **(defaults | fields))


def status(wamid: str, seconds: int, value: DeliveryStatus, **fields: Any) -> StatusUpdate:
    defaults: dict[str, Any] = {"provider": "meta", "channel": "meta-main", "recipient": CUSTOMER}
    return StatusUpdate(
        provider_message_id=MessageId(wamid), status=value, timestamp=at(seconds), **(defaults | fields)
    )


def canonical_key(topic: str, content: dict[str, Any]) -> str:
    dump = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"meta:{topic}:{hashlib.sha256(dump.encode()).hexdigest()}"


def template_notice() -> ProviderNotice:
    value = json.loads(fixture_body("template_status_update.json"))["entry"][0]["changes"][0]["value"]
    return ProviderNotice(
        provider="meta",
        channel="meta-main",
        topic="message_template_status_update",
        account_id="310000000000001",
        dedupe_key=canonical_key("message_template_status_update", {"entry": "310000000000001", "value": value}),
        timestamp=at(1767226200),
        payload=value,
    )


def quality_notice() -> ProviderNotice:
    value = {"display_phone_number": "15550001234", "event": "FLAGGED", "current_limit": "TIER_10K"}
    return ProviderNotice(
        provider="meta",
        channel="meta-main",
        topic="phone_number_quality_update",
        account_id="310000000000001",
        dedupe_key=canonical_key("phone_number_quality_update", {"entry": "310000000000001", "value": value}),
        timestamp=at(1767226400),
        payload=value,
    )


def delivered_items(result: TranslatedWebhook) -> list[tuple[str, str]]:
    """(channel, provider message id) of every message and status, in order."""
    return [(e.channel, e.provider_message_id) for e in result.events if not isinstance(e, ProviderNotice)]


def without_raw(event: InboundEvent) -> InboundEvent:
    return event if isinstance(event, ProviderNotice) else dataclasses.replace(event, raw={})


CARD = {
    "name": {"first_name": "Mario", "last_name": "Sosa", "formatted_name": "Mario Sosa"},
    "phones": [{"phone": "+52 55 9876 5432", "wa_id": "5215598765432", "type": "CELL"}],
}

CASES = [
    pytest.param(
        "text.json",
        [message("wamid.TXT0001", 1767225600, MessageKind.TEXT, text="Hola, ¿tienen envío gratis?")],
        id="text",
    ),
    pytest.param(
        "image.json",
        [
            message(
                "wamid.IMG0001",
                1767225610,
                MessageKind.IMAGE,
                text="Este es el modelo",
                media=(MediaRef("1029384756102938", "image/jpeg", caption="Este es el modelo", sha256="aW1nLWhhc2g="),),
            )
        ],
        id="image",
    ),
    pytest.param(
        "audio_voice.json",
        [
            message(
                "wamid.AUD0001",
                1767225620,
                MessageKind.VOICE,
                media=(MediaRef("2039485761203948", "audio/ogg; codecs=opus", sha256="YXVkLWhhc2g="),),
            )
        ],
        id="voice-note",
    ),
    pytest.param(
        "audio.json",
        [
            message(
                "wamid.AUD0002",
                1767225625,
                MessageKind.AUDIO,
                media=(MediaRef("2039485761203949", "audio/mpeg", sha256="YXVkMi1oYXNo"),),
            )
        ],
        id="audio-file",
    ),
    pytest.param(
        "video.json",
        [
            message(
                "wamid.VID0001",
                1767225630,
                MessageKind.VIDEO,
                text="Así llegó la caja",
                media=(MediaRef("3049586712304958", "video/mp4", caption="Así llegó la caja", sha256="dmlkLWhhc2g="),),
            )
        ],
        id="video",
    ),
    pytest.param(
        "document.json",
        [
            message(
                "wamid.DOC0001",
                1767225640,
                MessageKind.DOCUMENT,
                text="Mi factura",
                media=(
                    MediaRef("4059687123405968", "application/pdf", "factura-8812.pdf", "Mi factura", "ZG9jLWhhc2g="),
                ),
            )
        ],
        id="document",
    ),
    pytest.param(
        "sticker.json",
        [
            message(
                "wamid.STK0001",
                1767225650,
                MessageKind.STICKER,
                media=(MediaRef("5069781234506978", "image/webp", sha256="c3RrLWhhc2g="),),
            )
        ],
        id="sticker",
    ),
    pytest.param(
        "location.json",
        [
            message(
                "wamid.LOC0001",
                1767225660,
                MessageKind.LOCATION,
                location=Location(19.4326, -99.1332, "Oficina Centro", "Av. Ejemplo 123, CDMX"),
            )
        ],
        id="location-place",
    ),
    pytest.param(
        "location_pin.json",
        [message("wamid.LOC0002", 1767225665, MessageKind.LOCATION, location=Location(19.4326, -99.1332))],
        id="location-pin",
    ),
    pytest.param(
        "contacts.json", [message("wamid.CON0001", 1767225670, MessageKind.CONTACTS, contacts=(CARD,))], id="contacts"
    ),
    pytest.param(
        "button_reply.json",
        [
            message(
                "wamid.BTR0001",
                1767225680,
                MessageKind.BUTTON_REPLY,
                text="Sí, confirmar",
                reply_choice=ReplyChoice("confirm_yes", "Sí, confirmar"),
                reply_to="wamid.OUT0042",
            )
        ],
        id="button-reply",
    ),
    pytest.param(
        "list_reply.json",
        [
            message(
                "wamid.LST0001",
                1767225690,
                MessageKind.LIST_REPLY,
                text="Martes 10:30",
                reply_choice=ReplyChoice("slot_1030", "Martes 10:30", "Sucursal Norte"),
                reply_to="wamid.OUT0043",
            )
        ],
        id="list-reply",
    ),
    pytest.param(
        "template_button.json",
        [
            message(
                "wamid.QRB0001",
                1767225700,
                MessageKind.TEMPLATE_BUTTON,
                text="Cambiar cita",
                reply_choice=ReplyChoice("reschedule:8812", "Cambiar cita"),
                reply_to="wamid.TPL0007",
            )
        ],
        id="template-quick-reply",
    ),
    pytest.param(
        "reaction.json",
        [
            message("wamid.RCT0001", 1767225710, MessageKind.REACTION, reaction=Reaction("wamid.OUT0042", "👍")),
            message("wamid.RCT0002", 1767225720, MessageKind.REACTION, reaction=Reaction("wamid.OUT0042", "")),
        ],
        id="reaction-and-removal",
    ),
    pytest.param(
        "reply_context.json",
        [message("wamid.RPL0001", 1767225730, MessageKind.TEXT, text="¿Y este en talla M?", reply_to="wamid.OUT0040")],
        id="quoted-reply",
    ),
    pytest.param(
        "forwarded.json",
        [
            message("wamid.FWD0001", 1767225780, MessageKind.TEXT, text="Mira esta oferta", forwarded=True),
            message("wamid.FWD0002", 1767225781, MessageKind.TEXT, text="Reenviado muchas veces", forwarded=True),
        ],
        id="forwarded",
    ),
    pytest.param(
        "referral.json",
        [
            message(
                "wamid.REF0001",
                1767225740,
                MessageKind.TEXT,
                text="Hola, vi su anuncio",
                referral=Referral(
                    source_type="ad",
                    source_id="120200000000000001",
                    source_url="https://fb.me/3xAmPlE",
                    headline="Envío gratis esta semana",
                    body="Escríbenos por WhatsApp",
                    media_type="image",
                    media_url="https://scontent.example/ad.jpg",
                    ctwa_clid="ARAxClickId-Example_9f3k2",
                ),
            )
        ],
        id="click-to-whatsapp-referral",
    ),
    pytest.param(
        "unsupported.json",
        [
            message(
                "wamid.UNS0001",
                1767225750,
                MessageKind.UNSUPPORTED,
                original_kind="poll",
                errors=(
                    ProviderErrorDetail("131051", "Message type unknown", "Message type is currently not supported."),
                ),
            )
        ],
        id="unsupported-with-errors",
    ),
    pytest.param(
        "order.json",
        [message("wamid.ORD0001", 1767225760, MessageKind.UNSUPPORTED, original_kind="order")],
        id="unknown-type-order",
    ),
    pytest.param(
        "interactive_nfm_reply.json",
        [
            message(
                "wamid.NFM0001",
                1767225770,
                MessageKind.UNSUPPORTED,
                original_kind="interactive.nfm_reply",
                reply_to="wamid.OUT0044",
            )
        ],
        id="unknown-interactive-flow-reply",
    ),
    pytest.param(
        "user_id_without_wa_id.json",
        [
            message(
                "wamid.UID0001",
                1767225790,
                MessageKind.TEXT,
                text="Hola de nuevo",
                sender_provider_id="MX.1502576394655843",
            )
        ],
        id="business-scoped-user-id",
    ),
    pytest.param(
        "contacts_out_of_order.json",
        [
            message("wamid.ORD1001", 1767226200, MessageKind.TEXT, text="Primero"),
            message(
                "wamid.ORD1002",
                1767226201,
                MessageKind.TEXT,
                text="Second",
                sender="+447700900123",
                sender_provider_id="447700900123",
                profile_name="Tom Becker",
            ),
        ],
        id="contacts-paired-by-wa-id-not-index",
    ),
    pytest.param(
        "statuses_sent_delivered_read.json",
        [
            status("wamid.OUT0042", 1767225800, DeliveryStatus.SENT),
            status("wamid.OUT0042", 1767225803, DeliveryStatus.DELIVERED),
            status("wamid.OUT0042", 1767225900, DeliveryStatus.READ),
        ],
        id="statuses-sent-delivered-read",
    ),
    pytest.param(
        "status_failed.json",
        [
            status(
                "wamid.OUT0050",
                1767226000,
                DeliveryStatus.FAILED,
                error=ProviderErrorDetail(
                    "131047",
                    "Re-engagement message",
                    "Message failed to send because more than 24 hours have passed since the customer last replied "
                    "to this number.",
                ),
            )
        ],
        id="status-failed",
    ),
    pytest.param(
        "status_played.json", [status("wamid.OUT0045", 1767225810, DeliveryStatus.READ)], id="status-played-is-read"
    ),
    pytest.param(
        "batched.json",
        [
            message("wamid.B0001", 1767226100, MessageKind.TEXT, text="Gracias"),
            message(
                "wamid.B0002",
                1767226101,
                MessageKind.TEXT,
                text="Open today?",
                sender="+447700900123",
                sender_provider_id="447700900123",
                profile_name="Tom Becker",
            ),
            status("wamid.OUT0060", 1767226099, DeliveryStatus.DELIVERED, recipient="+447700900123"),
            status("wamid.OUT0061", 1767226102, DeliveryStatus.READ, channel="meta-second"),
        ],
        id="batched-entries-and-changes",
    ),
    pytest.param("template_status_update.json", [template_notice()], id="template-status-update"),
    pytest.param("phone_number_quality_update.json", [quality_notice()], id="quality-update-routed-by-waba"),
]


@pytest.mark.parametrize(("fixture", "expected"), CASES)
def test_fixture_translates_to_normalised_events(fixture: str, expected: list[InboundEvent]) -> None:
    result = translate_fixture(fixture)

    assert [without_raw(event) for event in result.events] == expected
    assert result.problems == []
    assert result.unknown_channels == set()
    assert result.reply.status == 200


@pytest.mark.parametrize(("fixture", "expected"), CASES)
def test_each_event_keeps_its_own_item_as_raw(fixture: str, expected: list[InboundEvent]) -> None:
    payload = json.loads(fixture_body(fixture))
    values = [change["value"] for entry in payload["entry"] for change in entry["changes"]]
    items = [item for value in values for item in value.get("messages", []) + value.get("statuses", [])]

    raws = [event.raw for event in translate_fixture(fixture).events if not isinstance(event, ProviderNotice)]

    assert raws == items


def test_every_fixture_has_a_test() -> None:
    in_table = {param.values[0] for param in CASES}
    elsewhere = {"batch_with_malformed_items.json", "username_only_sender.json", "value_errors.json"}
    assert {path.name for path in FIXTURES.glob("*.json")} == in_table | elsewhere


# --------------------------------------------------------------------------------------------
# Signatures


def test_signature_matches_the_worked_example_of_the_reference() -> None:
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    expected = "sha256=eefab58106e73358686845848feb95c56372e7391b3dc050b6a31c8c5f347ece"

    assert meta_signature("0123456789abcdef0123456789abcdef", body) == expected
    assert signature_matches("0123456789abcdef0123456789abcdef", body, expected)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha1=abc",
        "eefab58106e73358686845848feb95c56372e7391b3dc050b6a31c8c5f347ece",
        "sha256=ünïcode",
    ],
)
def test_signature_does_not_match_a_missing_or_malformed_header(header: str | None) -> None:
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    assert not signature_matches("0123456789abcdef0123456789abcdef", body, header)


def test_correctly_signed_body_is_accepted() -> None:
    result = translator(MAIN).translate(post(fixture_body("text.json"), secret=APP_SECRET))
    assert [event.provider_message_id for event in result.events if isinstance(event, InboundMessage)] == [
        "wamid.TXT0001"
    ]


def test_missing_signature_is_rejected_with_401() -> None:
    with pytest.raises(WebhookRejected) as rejected:
        translator().translate(post(fixture_body("text.json"), secret=None))
    assert (rejected.value.status, rejected.value.code) == (401, "missing_signature")


def test_wrong_signature_is_rejected_with_403_naming_the_claimed_channel_and_no_secret() -> None:
    with pytest.raises(WebhookRejected) as rejected:
        translator(MAIN).translate(post(fixture_body("text.json"), secret="not-the-app-secret"))

    error = rejected.value
    assert (error.status, error.code, error.channel) == (403, "bad_signature", "meta-main")
    assert APP_SECRET not in f"{error.message} {error.reason}"


def test_wrong_signature_on_a_body_that_is_not_json_names_no_channel() -> None:
    with pytest.raises(WebhookRejected) as rejected:
        translator().translate(post(b"\x00garbage", secret="not-the-app-secret"))
    assert (rejected.value.status, rejected.value.channel) == (403, None)


def test_signature_is_checked_on_the_raw_bytes_not_on_reserialised_json() -> None:
    raw = fixture_body("text.json")
    reserialised = json.dumps(json.loads(raw)).encode()  # escapes "í" as \u00ed, as Meta may

    with pytest.raises(WebhookRejected) as rejected:
        translator().translate(post(raw, signature=meta_signature(APP_SECRET, reserialised)))
    assert rejected.value.code == "bad_signature"


def test_no_configured_channel_rejects_every_signature() -> None:
    with pytest.raises(WebhookRejected) as rejected:
        MetaWebhookTranslator.for_channels([]).translate(post(fixture_body("text.json")))
    assert rejected.value.status == 403


# --------------------------------------------------------------------------------------------
# Several channels and apps


def test_number_without_a_configured_channel_is_reported_and_the_rest_translated() -> None:
    result = translate_fixture("batched.json", MAIN)

    assert result.unknown_channels == {"420000000000009"}
    assert {event.channel for event in result.events} == {"meta-main"}
    assert len(result.events) == 3


def test_change_for_channel_b_signed_with_the_secret_of_channel_a_is_not_attributed_to_b() -> None:
    two_apps = translator(MAIN, SECOND_OTHER_APP)
    body = fixture_body("batched.json")

    signed_by_a = two_apps.translate(post(body, secret=APP_SECRET))
    signed_by_b = two_apps.translate(post(body, secret=OTHER_APP_SECRET))

    assert {event.channel for event in signed_by_a.events} == {"meta-main"}
    assert signed_by_a.unknown_channels == {"420000000000009"}
    assert delivered_items(signed_by_b) == [("meta-second", "wamid.OUT0061")]
    assert signed_by_b.unknown_channels == {"420000000000002"}


def test_for_channels_keeps_only_meta_channels() -> None:
    other = ChannelConfig(name="twilio-main", provider="twilio", business_number="+15550001234")
    only_meta = MetaWebhookTranslator.for_channels([other, MAIN])

    # A Twilio channel has no app secret: keeping it would fail on the first signature check.
    assert only_meta.translate(post(fixture_body("text.json"))).events


# --------------------------------------------------------------------------------------------
# Notices


def test_template_status_update_becomes_a_notice_with_a_stable_dedupe_key() -> None:
    first = translate_fixture("template_status_update.json").events
    again = translate_fixture("template_status_update.json").events

    assert first == again == [template_notice()]


def test_notice_for_an_account_without_a_channel_is_still_accepted() -> None:
    body = fixture_body("template_status_update.json").replace(b"310000000000001", b"310000000000777")
    result = translate_fixture_body(body)

    [notice] = result.events
    assert isinstance(notice, ProviderNotice)
    assert (notice.channel, notice.account_id) == (None, "310000000000777")
    assert result.problems == []


def test_notice_without_time_is_stamped_now_and_value_errors_become_error_notices() -> None:
    before = datetime.now(UTC)
    result = translate_fixture("value_errors.json")

    [notice] = result.events
    assert isinstance(notice, ProviderNotice)
    assert (notice.topic, notice.channel, notice.account_id) == ("errors", "meta-main", "310000000000001")
    assert notice.payload["code"] == 131000
    assert notice.dedupe_key.startswith("meta:errors:")
    assert before <= notice.timestamp <= datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# Malformed bodies and items


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"entry"',
        b"{}",
        b'{"object":"whatsapp_business_account"}',
        b'{"entry":{}}',
        b'{"entry":[' + b"[" * 300 + b"]" * 300 + b"]}",
    ],
    ids=[
        "empty",
        "not-json",
        "not-utf8",
        "array",
        "string",
        "empty-object",
        "no-entry",
        "entry-not-a-list",
        "too-deep",
    ],
)
def test_unreadable_body_is_rejected_with_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as rejected:
        translate_fixture_body(body)
    assert (rejected.value.status, rejected.value.code) == (400, "malformed_body")


def test_malformed_items_do_not_stop_the_rest_of_the_batch() -> None:
    result = translate_fixture("batch_with_malformed_items.json")

    assert delivered_items(result) == [("meta-main", "wamid.BAD0001"), ("meta-main", "wamid.BAD0005")]
    messages = json.loads(fixture_body("batch_with_malformed_items.json"))["entry"][0]["changes"][0]["value"][
        "messages"
    ]
    assert [problem.item for problem in result.problems] == [
        messages[1],  # timestamp is not unix seconds
        messages[2],  # no id
        messages[3],  # "from" is not a phone number
        {"field": "messages", "value": "not an object"},
    ]
    assert [problem.channel for problem in result.problems] == ["meta-main", "meta-main", "meta-main", None]


def test_unknown_status_is_a_problem_not_a_crash() -> None:
    body = fixture_body("status_played.json").replace(b'"played"', b'"deleted"')
    result = translate_fixture_body(body)

    assert result.events == []
    [problem] = result.problems
    assert "deleted" in problem.reason


def test_sender_whose_number_is_withheld_is_known_by_their_user_id() -> None:
    # A customer with a username: no ``from``, the business-scoped user id instead.
    result = translate_fixture("username_only_sender.json")

    assert result.problems == []
    [message] = result.events
    assert isinstance(message, InboundMessage)
    assert (message.provider_message_id, message.sender, message.sender_provider_id) == (
        "wamid.UID0002",
        None,
        "MX.1502576394655843",
    )
    assert message.text == "Solo con usuario"


def test_message_with_neither_number_nor_user_id_is_a_problem() -> None:
    payload = json.loads((FIXTURES / "username_only_sender.json").read_bytes())
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"][0]["from_user_id"]
    value["contacts"] = []

    result = translate_fixture_body(json.dumps(payload).encode())

    assert result.events == []
    [problem] = result.problems
    assert "neither from nor from_user_id" in problem.reason


# --------------------------------------------------------------------------------------------
# Handshake


@pytest.mark.parametrize("token", [VERIFY_TOKEN, "second-verify-token"])
def test_handshake_with_a_configured_token_echoes_the_challenge(token: str) -> None:
    reply = translator().handshake(get(f"hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}"))
    assert (reply.status, reply.body, reply.content_type) == (200, b"1158201444", "text/plain")


@pytest.mark.parametrize(
    "query",
    [
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong-token",
        "hub.mode=unsubscribe&hub.challenge=1158201444&hub.verify_token=main-verify-token",
        "hub.mode=subscribe&hub.verify_token=main-verify-token",
        "hub.challenge=1158201444&hub.verify_token=main-verify-token",
        "",
    ],
    ids=["wrong-token", "wrong-mode", "no-challenge", "no-mode", "nothing"],
)
def test_handshake_is_refused_with_403(query: str) -> None:
    with pytest.raises(WebhookRejected) as rejected:
        translator().handshake(get(query))
    assert (rejected.value.status, rejected.value.code) == (403, "verification_failed")


# --------------------------------------------------------------------------------------------
# Properties


def assert_returns_or_rejects_as_malformed(body: bytes) -> None:
    try:
        translate_fixture_body(body)
    except WebhookRejected as rejected:
        assert (rejected.status, rejected.code) == (400, "malformed_body")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with a few of its parts, at any depth, replaced by arbitrary JSON or dropped."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    if isinstance(value, dict):
        kept = {key: item for key, item in value.items() if draw(st.integers(0, 19)) != 0}
        return {key: draw(mutated(item)) for key, item in kept.items()}
    if isinstance(value, list):
        return [draw(mutated(item)) for item in value]
    return value


mutated_fixtures = st.sampled_from(sorted(FIXTURES.glob("*.json"))).flatmap(
    lambda path: mutated(json.loads(path.read_bytes()))
)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_any_signed_bytes_are_translated_or_rejected_as_malformed(body: bytes) -> None:
    assert_returns_or_rejects_as_malformed(body)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_signed_json_value_is_translated_or_rejected_as_malformed(value: Any) -> None:
    assert_returns_or_rejects_as_malformed(json.dumps(value).encode())


@settings(max_examples=500, deadline=None)
@given(mutated_fixtures)
def test_any_damaged_fixture_is_translated_or_rejected_as_malformed(payload: Any) -> None:
    assert_returns_or_rejects_as_malformed(json.dumps(payload).encode())
