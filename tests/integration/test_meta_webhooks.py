"""Meta webhooks through the real HTTP server, on SQLite and PostgreSQL.

Each fixture of ``tests/fixtures/meta`` is posted as Meta posts it (raw bytes, signed with the app
secret); what a CRM then sees through ``/v1`` is checked: the lead under the customer's number, one
timeline entry per message with a readable summary, and every id the CRM needs to act on the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from helpers import (
    FIXTURES,
    LUCIA,
    assert_contains,
    leads_for,
    message,
    meta_fixture,
    only_lead,
    post_meta,
    record_sent_message,
    row_counts,
    scrape,
    timeline_of,
    v1,
)
from sqlalchemy import select

from conftest import META_VERIFY_TOKEN, RunningApp
from leadline.store.tables import message_statuses, provider_notices

TOM = "+447700900123"


@dataclass(frozen=True)
class Expected:
    """One message a fixture carries, as the CRM should see it."""

    provider_message_id: str
    kind: str
    summary: str
    sender: str = LUCIA
    content: dict[str, Any] = field(default_factory=dict)
    """Fields of GET /v1/messages/{id} ``content`` that must be kept (nested dicts compared by subset)."""


MESSAGE_FIXTURES: dict[str, list[Expected]] = {
    "text": [Expected("wamid.TXT0001", "text", "Hola, ¿tienen envío gratis?")],
    "image": [
        Expected(
            "wamid.IMG0001",
            "image",
            "[image] Este es el modelo",
            content={"media": [{"ref": "1029384756102938", "mime_type": "image/jpeg", "caption": "Este es el modelo"}]},
        )
    ],
    "video": [Expected("wamid.VID0001", "video", "[video] Así llegó la caja")],
    "audio": [Expected("wamid.AUD0002", "audio", "[audio]", content={"media": [{"ref": "2039485761203949"}]})],
    "audio_voice": [Expected("wamid.AUD0001", "voice", "[voice]", content={"media": [{"ref": "2039485761203948"}]})],
    "document": [
        Expected(
            "wamid.DOC0001",
            "document",
            "[document] Mi factura",
            content={"media": [{"ref": "4059687123405968", "filename": "factura-8812.pdf"}]},
        )
    ],
    "sticker": [Expected("wamid.STK0001", "sticker", "[sticker]", content={"media": [{"mime_type": "image/webp"}]})],
    "location": [
        Expected(
            "wamid.LOC0001",
            "location",
            "[location] Oficina Centro (19.43260,-99.13320)",
            content={"location": {"latitude": 19.4326, "longitude": -99.1332, "address": "Av. Ejemplo 123, CDMX"}},
        )
    ],
    "location_pin": [Expected("wamid.LOC0002", "location", "[location] 19.43260,-99.13320")],
    "contacts": [Expected("wamid.CON0001", "contacts", "[contacts] 1 shared")],
    "button_reply": [
        Expected(
            "wamid.BTR0001",
            "button_reply",
            "[button_reply] Sí, confirmar",
            content={"reply_choice": {"id": "confirm_yes", "title": "Sí, confirmar"}, "reply_to": "wamid.OUT0042"},
        )
    ],
    "list_reply": [
        Expected(
            "wamid.LST0001",
            "list_reply",
            "[list_reply] Martes 10:30",
            content={
                "reply_choice": {"id": "slot_1030", "title": "Martes 10:30", "description": "Sucursal Norte"},
                "reply_to": "wamid.OUT0043",
            },
        )
    ],
    "template_button": [
        Expected(
            "wamid.QRB0001",
            "template_button",
            "[template_button] Cambiar cita",
            content={"reply_choice": {"id": "reschedule:8812"}, "reply_to": "wamid.TPL0007"},
        )
    ],
    "reaction": [
        Expected(
            "wamid.RCT0001", "reaction", "[reaction] 👍", content={"reaction": {"target_message_id": "wamid.OUT0042"}}
        ),
        Expected(
            "wamid.RCT0002",
            "reaction",
            "[reaction removed]",
            content={"reaction": {"target_message_id": "wamid.OUT0042", "emoji": ""}},
        ),
    ],
    "referral": [
        Expected(
            "wamid.REF0001",
            "text",
            "Hola, vi su anuncio",
            content={
                "referral": {
                    "ctwa_clid": "ARAxClickId-Example_9f3k2",
                    "source_id": "120200000000000001",
                    "source_type": "ad",
                    "source_url": "https://fb.me/3xAmPlE",
                }
            },
        )
    ],
    "reply_context": [
        Expected("wamid.RPL0001", "text", "¿Y este en talla M?", content={"reply_to": "wamid.OUT0040"}),
    ],
    "forwarded": [
        Expected("wamid.FWD0001", "text", "Mira esta oferta", content={"forwarded": True}),
        Expected("wamid.FWD0002", "text", "Reenviado muchas veces", content={"forwarded": True}),
    ],
    "interactive_nfm_reply": [
        Expected(
            "wamid.NFM0001",
            "unsupported",
            "[unsupported: interactive.nfm_reply]",
            content={"original_kind": "interactive.nfm_reply", "reply_to": "wamid.OUT0044"},
        )
    ],
    "order": [
        Expected("wamid.ORD0001", "unsupported", "[unsupported: order]", content={"original_kind": "order"}),
    ],
    "unsupported": [
        Expected(
            "wamid.UNS0001",
            "unsupported",
            "[unsupported: poll]",
            content={"original_kind": "poll", "errors": [{"code": "131051"}]},
        )
    ],
    "user_id_without_wa_id": [
        Expected("wamid.UID0001", "text", "Hola de nuevo", content={"sender_provider_id": "MX.1502576394655843"}),
    ],
    "contacts_out_of_order": [
        Expected("wamid.ORD1001", "text", "Primero", content={"profile_name": "Lucía Ramos"}),
        Expected("wamid.ORD1002", "text", "Second", sender=TOM, content={"profile_name": "Tom Becker"}),
    ],
    "batched": [
        Expected("wamid.B0001", "text", "Gracias", content={"channel": "meta-main"}),
        Expected("wamid.B0002", "text", "Open today?", sender=TOM, content={"channel": "meta-main"}),
    ],
}
NOTICE_FIXTURES = {
    "template_status_update": "message_template_status_update",
    "phone_number_quality_update": "phone_number_quality_update",
    "value_errors": "errors",
}
STATUS_FIXTURES = {"statuses_sent_delivered_read", "status_failed", "status_played"}
# Covered by their own tests below.
SPECIAL_FIXTURES = {"batch_with_malformed_items", "username_only_sender"}


def test_every_meta_fixture_is_covered() -> None:
    names = {path.stem for path in (FIXTURES / "meta").glob("*.json")}
    covered = set(MESSAGE_FIXTURES) | set(NOTICE_FIXTURES) | STATUS_FIXTURES | SPECIAL_FIXTURES
    assert names == covered


@pytest.mark.parametrize("fixture", sorted(MESSAGE_FIXTURES))
async def test_meta_message_appears_on_the_leads_timeline(app: RunningApp, fixture: str) -> None:
    expected = MESSAGE_FIXTURES[fixture]
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, app.url, meta_fixture(fixture))
        assert response.status_code == 200, response.text

        for sender in {e.sender for e in expected}:
            lead = await only_lead(client, app.url, sender)
            assert lead["phone"] == sender
            entries = [e for e in await timeline_of(client, app.url, lead["id"]) if e["kind"] == "message_in"]
            mine = sorted((e for e in expected if e.sender == sender), key=lambda e: e.provider_message_id)
            entries.sort(key=lambda e: e["data"]["provider_message_id"])
            assert [(e["data"]["provider_message_id"], e["summary"]) for e in entries] == [
                (m.provider_message_id, m.summary) for m in mine
            ]
            for entry, want in zip(entries, mine, strict=True):
                found = await message(client, app.url, entry["message_id"])
                assert (found["direction"], found["provider"], found["kind"]) == ("in", "meta", want.kind)
                assert found["lead_id"] == lead["id"]
                assert found["channel"] == entry["channel"] == "meta-main"
                assert_contains(found["content"], want.content)


async def test_meta_profile_name_becomes_the_leads_name(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("contacts_out_of_order"))
        lucia = await only_lead(client, app.url, LUCIA)
        tom = await only_lead(client, app.url, TOM)
    assert (lucia["display_name"], tom["display_name"]) == ("Lucía Ramos", "Tom Becker")
    assert lucia["last_inbound_channel"] == "meta-main"


async def test_meta_batch_routes_each_item_to_its_own_channel(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("text"))
        lucia = await only_lead(client, app.url, LUCIA)
        await post_meta(client, app.url, meta_fixture("contacts_out_of_order"))
        tom = await only_lead(client, app.url, TOM)
        on_main = await record_sent_message(
            app.services.db,
            lead_id=tom["id"],
            channel="meta-main",
            provider="meta",
            provider_message_id="wamid.OUT0060",
        )
        on_second = await record_sent_message(
            app.services.db,
            lead_id=lucia["id"],
            channel="meta-second",
            provider="meta",
            provider_message_id="wamid.OUT0061",
        )
        main_before = await scrape(
            client, app.url, "leadline_inbound_events_total", provider="meta", channel="meta-main", type="status"
        )
        second_before = await scrape(
            client, app.url, "leadline_inbound_events_total", provider="meta", channel="meta-second", type="status"
        )

        response = await post_meta(client, app.url, meta_fixture("batched"))

        assert response.status_code == 200
        assert (await message(client, app.url, on_main))["status"] == "delivered"
        assert (await message(client, app.url, on_second))["status"] == "read"
        main_after = await scrape(
            client, app.url, "leadline_inbound_events_total", provider="meta", channel="meta-main", type="status"
        )
        second_after = await scrape(
            client, app.url, "leadline_inbound_events_total", provider="meta", channel="meta-second", type="status"
        )
        assert (main_after - main_before, second_after - second_before) == (1, 1)
        assert {e["summary"] for e in await timeline_of(client, app.url, tom["id"])} >= {"Open today?", "delivered"}


async def test_malformed_item_in_a_meta_batch_does_not_stop_the_others(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        problems_before = await scrape(
            client, app.url, "leadline_webhook_item_problems_total", provider="meta", channel="meta-main"
        )

        response = await post_meta(client, app.url, meta_fixture("batch_with_malformed_items"))

        assert response.status_code == 200
        lead = await only_lead(client, app.url, LUCIA)
        timeline = await timeline_of(client, app.url, lead["id"])
        assert sorted(e["summary"] for e in timeline) == ["Antes", "Después"]
        problems_after = await scrape(
            client, app.url, "leadline_webhook_item_problems_total", provider="meta", channel="meta-main"
        )
        assert problems_after - problems_before == 3


async def test_meta_message_from_a_customer_whose_number_is_withheld_is_kept_and_found_again_by_number(
    app: RunningApp,
) -> None:
    """A customer with a username writes without a number: a lead known by the user id alone; when a later
    message shows the number with the same user id, it is the same lead, and now has the number."""
    async with httpx.AsyncClient() as client:
        withheld = await post_meta(client, app.url, meta_fixture("username_only_sender"))
        assert withheld.status_code == 200
        [lead] = (await v1(client, app.url, "/leads"))["leads"]
        assert lead["phone"] is None
        assert [e["summary"] for e in await timeline_of(client, app.url, lead["id"])] == ["Solo con usuario"]

        shown = await post_meta(client, app.url, meta_fixture("user_id_without_wa_id"))
        assert shown.status_code == 200

        again = await only_lead(client, app.url, LUCIA)
        assert again["id"] == lead["id"]
        assert again["phone"] == LUCIA
        summaries = [e["summary"] for e in await timeline_of(client, app.url, lead["id"])]
        assert sorted(summaries) == ["Hola de nuevo", "Solo con usuario"]
    assert (await row_counts(app.services.db))["leads"] == 1


@pytest.mark.parametrize(("fixture", "topic"), sorted(NOTICE_FIXTURES.items()))
async def test_meta_non_message_webhook_is_kept_as_a_provider_notice(app: RunningApp, fixture: str, topic: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, app.url, meta_fixture(fixture))
        again = await post_meta(client, app.url, meta_fixture(fixture))

    assert (response.status_code, again.status_code) == (200, 200)
    async with app.services.db.read() as conn:
        notices = list(await conn.execute(select(provider_notices)))
    assert [(n.provider, n.topic, n.channel, n.account_id) for n in notices] == [
        ("meta", topic, "meta-main", "310000000000001")
    ]
    counts = await row_counts(app.services.db)
    assert (counts["leads"], counts["messages"], counts["timeline_events"]) == (0, 0, 0)


async def test_template_rejection_keeps_the_reason(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("template_status_update"))
    async with app.services.db.read() as conn:
        payload = (await conn.execute(select(provider_notices.c.payload))).scalar_one()
    assert payload["event"] == "REJECTED"
    assert payload["message_template_name"] == "order_update"
    assert payload["rejection_info"]["reason"].startswith("Two parameters are adjacent")


async def sent_message_to_lucia(app: RunningApp, client: httpx.AsyncClient, provider_message_id: str) -> str:
    await post_meta(client, app.url, meta_fixture("text"))
    lead = await only_lead(client, app.url, LUCIA)
    return await record_sent_message(
        app.services.db,
        lead_id=lead["id"],
        channel="meta-main",
        provider="meta",
        provider_message_id=provider_message_id,
    )


async def test_meta_statuses_move_a_sent_message_to_read(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        sent = await sent_message_to_lucia(app, client, "wamid.OUT0042")

        response = await post_meta(client, app.url, meta_fixture("statuses_sent_delivered_read"))

        assert response.status_code == 200
        found = await message(client, app.url, sent)
    assert found["status"] == "read"
    assert [s["status"] for s in found["status_history"]] == ["sent", "delivered", "read"]


async def test_meta_played_voice_note_counts_as_read(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        sent = await sent_message_to_lucia(app, client, "wamid.OUT0045")
        await post_meta(client, app.url, meta_fixture("status_played"))
        assert (await message(client, app.url, sent))["status"] == "read"


async def test_meta_failed_status_keeps_the_error(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        sent = await sent_message_to_lucia(app, client, "wamid.OUT0050")
        await post_meta(client, app.url, meta_fixture("status_failed"))
        found = await message(client, app.url, sent)
        lead = await only_lead(client, app.url, LUCIA)
        timeline = await timeline_of(client, app.url, lead["id"])
    assert found["status"] == "failed"
    assert found["error"] == {"code": "131047", "title": "Re-engagement message"}
    [history] = found["status_history"]
    assert history["error"]["detail"].startswith("Message failed to send because more than 24 hours")
    assert "failed: 131047 Re-engagement message" in [e["summary"] for e in timeline]


async def test_meta_status_for_an_unknown_message_is_kept(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, app.url, meta_fixture("status_failed"))
    assert response.status_code == 200
    async with app.services.db.read() as conn:
        kept = list(await conn.execute(select(message_statuses.c.provider_message_id, message_statuses.c.status)))
    assert kept == [("wamid.OUT0050", "failed")]


async def test_meta_handshake_with_the_right_token_echoes_the_challenge(app: RunningApp) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": META_VERIFY_TOKEN, "hub.challenge": "1158201444"}
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/webhooks/meta", params=params)
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "not-the-token", "hub.challenge": "1158201444"},
        {"hub.mode": "unsubscribe", "hub.verify_token": META_VERIFY_TOKEN, "hub.challenge": "1158201444"},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444"},
        {},
    ],
    ids=["wrong-token", "wrong-mode", "no-token", "nothing"],
)
async def test_meta_handshake_with_a_wrong_token_is_refused(app: RunningApp, params: dict[str, str]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/webhooks/meta", params=params)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "verification_failed"
    assert "1158201444" not in response.text


async def test_meta_message_is_readable_by_any_spelling_of_the_number(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("text"))
        spellings = ["+5215512345678", "5215512345678", "+525512345678", "whatsapp:+5215512345678", "+52 55 1234 5678"]
        ids = {lead["id"] for spelling in spellings for lead in await leads_for(client, app.url, spelling)}
    assert len(ids) == 1
