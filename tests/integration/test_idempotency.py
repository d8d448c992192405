"""Exactly once, as a CRM sees it: one lead per person and one timeline entry per message, however often,
however concurrently and through however many server processes a provider delivers the same webhook."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from helpers import (
    LUCIA,
    message,
    meta_fixture,
    meta_json,
    only_lead,
    post_meta,
    post_twilio,
    record_sent_message,
    row_counts,
    timeline_of,
    twilio_fixture,
)

from conftest import RunningApp, running_app
from leadline.config import LeadlineConfig

MAIN_PHONE_NUMBER_ID = "420000000000002"


def meta_text(wamid: str, sender: str, body: str, timestamp: int = 1767225600, name: str = "Cliente") -> bytes:
    """A Meta text message webhook from ``sender`` (a WhatsApp id: digits, no +) to meta-main."""
    return meta_json(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "310000000000001",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550001234",
                                    "phone_number_id": MAIN_PHONE_NUMBER_ID,
                                },
                                "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                                "messages": [
                                    {
                                        "from": sender,
                                        "id": wamid,
                                        "timestamp": str(timestamp),
                                        "type": "text",
                                        "text": {"body": body},
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    )


def meta_status(wamid: str, status: str, timestamp: int, errors: list[dict[str, Any]] | None = None) -> bytes:
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(timestamp), "recipient_id": "5215512345678"}
    if errors is not None:
        item["errors"] = errors
    return meta_json(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "310000000000001",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550001234",
                                    "phone_number_id": MAIN_PHONE_NUMBER_ID,
                                },
                                "statuses": [item],
                            },
                        }
                    ],
                }
            ],
        }
    )


async def assert_one_lead_with_one_message(app: RunningApp, client: httpx.AsyncClient, phone: str = LUCIA) -> None:
    lead = await only_lead(client, app.url, phone)
    timeline = await timeline_of(client, app.url, lead["id"])
    assert [e["kind"] for e in timeline] == ["message_in"]
    counts = await row_counts(app.services.db)
    assert (counts["leads"], counts["messages"], counts["timeline_events"]) == (1, 1, 1)


# --------------------------------------------------------------------------------------------
# The same webhook, again and again


async def test_duplicate_meta_webhook_records_one_message(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        first = await post_meta(client, app.url, meta_fixture("text"))
        second = await post_meta(client, app.url, meta_fixture("text"))
        assert (first.status_code, second.status_code) == (200, 200)
        await assert_one_lead_with_one_message(app, client)


async def test_duplicate_twilio_webhook_records_one_message(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        first = await post_twilio(client, app.url, twilio_fixture("inbound_text"))
        second = await post_twilio(client, app.url, twilio_fixture("inbound_text"))
        assert (first.status_code, second.status_code) == (200, 200)
        await assert_one_lead_with_one_message(app, client)


async def test_meta_webhook_delivered_ten_times_in_a_row_records_one_message(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(10):
            assert (await post_meta(client, app.url, meta_fixture("text"))).status_code == 200
        await assert_one_lead_with_one_message(app, client)


async def test_meta_webhook_delivered_ten_times_at_once_records_one_message(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(post_meta(client, app.url, meta_fixture("text")) for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        await assert_one_lead_with_one_message(app, client)


async def test_twilio_webhook_delivered_ten_times_at_once_records_one_message(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        params = twilio_fixture("inbound_text")
        responses = await asyncio.gather(*(post_twilio(client, app.url, params) for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        await assert_one_lead_with_one_message(app, client)


async def test_meta_webhook_replayed_days_later_records_nothing_new(app: RunningApp) -> None:
    """Meta retries for up to 7 days: a replay after other traffic is still the same message."""
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("text"))
        for fixture in ("image", "reaction", "contacts_out_of_order", "template_status_update"):
            await post_meta(client, app.url, meta_fixture(fixture))
        await post_twilio(client, app.url, twilio_fixture("inbound_text"))
        before = await row_counts(app.services.db)
        lead = await only_lead(client, app.url, LUCIA)
        timeline_before = await timeline_of(client, app.url, lead["id"])

        replay = await post_meta(client, app.url, meta_fixture("text"))

        assert replay.status_code == 200
        assert await row_counts(app.services.db) == before
        assert await timeline_of(client, app.url, lead["id"]) == timeline_before
        assert [e["summary"] for e in timeline_before].count("Hola, ¿tienen envío gratis?") == 2  # Meta + Twilio


# --------------------------------------------------------------------------------------------
# One person, many spellings and channels


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("5511987654321", "551187654321", id="brazil-ninth-digit-then-without"),
        pytest.param("551187654321", "5511987654321", id="brazil-without-then-ninth-digit"),
        pytest.param("5215512345678", "525512345678", id="mexico-521-then-52"),
        pytest.param("525512345678", "5215512345678", id="mexico-52-then-521"),
        pytest.param("5491112345678", "541112345678", id="argentina-549-then-54"),
    ],
)
async def test_same_person_under_two_spellings_of_their_number_is_one_lead(
    app: RunningApp, first: str, second: str
) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_text("wamid.SPELL1", first, "primero", 1767225600))
        await post_meta(client, app.url, meta_text("wamid.SPELL2", second, "segundo", 1767225700))

        lead = await only_lead(client, app.url, "+" + first)
        assert (await only_lead(client, app.url, "+" + second))["id"] == lead["id"]
        timeline = await timeline_of(client, app.url, lead["id"])
    assert [e["summary"] for e in timeline] == ["segundo", "primero"]
    assert (await row_counts(app.services.db))["leads"] == 1


async def test_twilio_whatsapp_address_and_meta_wa_id_are_one_lead(app: RunningApp) -> None:
    """Twilio says ``whatsapp:+525512345678``; Meta says ``5215512345678``: the same Mexican mobile."""
    params = {**twilio_fixture("inbound_text"), "From": "whatsapp:+525512345678", "WaId": "525512345678"}
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("text"))
        await post_twilio(client, app.url, params)
        lead = await only_lead(client, app.url, "whatsapp:+525512345678")
        assert lead["phone"] == LUCIA
        timeline = await timeline_of(client, app.url, lead["id"])
    assert sorted(e["channel"] for e in timeline) == ["meta-main", "twilio-main"]


async def test_customer_writing_to_meta_and_twilio_channels_has_one_timeline(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("image"))
        await post_twilio(client, app.url, twilio_fixture("inbound_location"))

        lead = await only_lead(client, app.url, LUCIA)
        timeline = await timeline_of(client, app.url, lead["id"])
    assert {(e["channel"], e["summary"]) for e in timeline} == {
        ("meta-main", "[image] Este es el modelo"),
        ("twilio-main", "[location] Oficina Centro (19.43260,-99.13320)"),
    }
    assert (await row_counts(app.services.db))["leads"] == 1


async def test_new_customer_writing_many_messages_at_once_is_one_lead(app: RunningApp) -> None:
    bodies = [meta_text(f"wamid.BURST{i:02}", "5511987654321", f"msg {i}", 1767225600 + i) for i in range(10)]
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(post_meta(client, app.url, body) for body in bodies))
        assert [r.status_code for r in responses] == [200] * 10
        lead = await only_lead(client, app.url, "+5511987654321")
        timeline = await timeline_of(client, app.url, lead["id"])
    assert len(timeline) == 10
    assert (await row_counts(app.services.db))["leads"] == 1


# --------------------------------------------------------------------------------------------
# Several server processes on one database


async def test_two_servers_receiving_the_same_webhooks_at_once_record_each_message_once(
    config: LeadlineConfig,
) -> None:
    """Two apps (two connection pools) stand in for two processes behind a load balancer."""
    bodies = [meta_fixture("text"), meta_fixture("image"), meta_fixture("contacts_out_of_order")]
    async with running_app(config) as one, running_app(config) as two, httpx.AsyncClient() as client:
        responses = await asyncio.gather(
            *(post_meta(client, server.url, body) for body in bodies for server in (one, two) for _ in range(3))
        )
        assert {r.status_code for r in responses} == {200}

        lucia = await only_lead(client, one.url, LUCIA)
        tom = await only_lead(client, two.url, "+447700900123")
        lucia_timeline = await timeline_of(client, two.url, lucia["id"])
        tom_timeline = await timeline_of(client, one.url, tom["id"])
        counts = await row_counts(one.services.db)
    assert sorted(e["summary"] for e in lucia_timeline) == [
        "Hola, ¿tienen envío gratis?",
        "Primero",
        "[image] Este es el modelo",
    ]
    assert [e["summary"] for e in tom_timeline] == ["Second"]
    assert (counts["leads"], counts["messages"], counts["timeline_events"]) == (2, 4, 4)


async def test_two_servers_meeting_a_new_customer_at_once_create_one_lead(config: LeadlineConfig) -> None:
    """Different messages of one new person reach two processes at once: the identity decides, once."""
    async with running_app(config) as one, running_app(config) as two, httpx.AsyncClient() as client:
        for round_ in range(5):
            sender = f"55119876543{round_:02}"
            bodies = [meta_text(f"wamid.RACE{round_}-{i}", sender, f"msg {i}", 1767225600 + i) for i in range(6)]
            responses = await asyncio.gather(
                *(post_meta(client, (one, two)[i % 2].url, body) for i, body in enumerate(bodies))
            )
            assert {r.status_code for r in responses} == {200}
            lead = await only_lead(client, one.url, "+" + sender)
            assert len(await timeline_of(client, two.url, lead["id"])) == 6
        assert (await row_counts(one.services.db))["leads"] == 5


# --------------------------------------------------------------------------------------------
# Statuses only move forward, and each is counted once


async def sent_message(app: RunningApp, client: httpx.AsyncClient, wamid: str) -> str:
    await post_meta(client, app.url, meta_fixture("text"))
    lead = await only_lead(client, app.url, LUCIA)
    return await record_sent_message(
        app.services.db, lead_id=lead["id"], channel="meta-main", provider="meta", provider_message_id=wamid
    )


async def test_late_delivered_status_does_not_undo_read(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        sent = await sent_message(app, client, "wamid.OUT7001")
        await post_meta(client, app.url, meta_status("wamid.OUT7001", "read", 1767225900))
        await post_meta(client, app.url, meta_status("wamid.OUT7001", "delivered", 1767225800))
        await post_meta(client, app.url, meta_status("wamid.OUT7001", "sent", 1767225700))

        found = await message(client, app.url, sent)
    assert found["status"] == "read"
    assert [s["status"] for s in found["status_history"]] == ["sent", "delivered", "read"]


async def test_failed_status_keeps_its_error_code_and_title(app: RunningApp) -> None:
    errors = [{"code": 131026, "title": "Message undeliverable", "error_data": {"details": "Receiver is incapable"}}]
    async with httpx.AsyncClient() as client:
        sent = await sent_message(app, client, "wamid.OUT7002")
        await post_meta(client, app.url, meta_status("wamid.OUT7002", "sent", 1767225700))
        await post_meta(client, app.url, meta_status("wamid.OUT7002", "failed", 1767225710, errors))

        found = await message(client, app.url, sent)
    assert found["status"] == "failed"
    assert found["error"] == {"code": "131026", "title": "Message undeliverable"}
    assert found["status_history"][-1]["error"] == {
        "code": "131026",
        "title": "Message undeliverable",
        "detail": "Receiver is incapable",
    }


async def test_status_that_arrives_before_its_message_is_applied_when_the_message_is_recorded(
    app: RunningApp,
) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_status("wamid.OUT7003", "delivered", 1767225800))
        sent = await sent_message(app, client, "wamid.OUT7003")

        found = await message(client, app.url, sent)
        lead = await only_lead(client, app.url, LUCIA)
        timeline = await timeline_of(client, app.url, lead["id"])
    assert found["status"] == "delivered"
    assert [s["status"] for s in found["status_history"]] == ["delivered"]
    assert [e["summary"] for e in timeline if e["kind"] == "status"] == ["delivered"]


async def test_duplicate_status_webhook_is_one_status_history_entry(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        sent = await sent_message(app, client, "wamid.OUT7004")
        body = meta_status("wamid.OUT7004", "delivered", 1767225800)
        await post_meta(client, app.url, body)
        await asyncio.gather(*(post_meta(client, app.url, body) for _ in range(5)))

        found = await message(client, app.url, sent)
        lead = await only_lead(client, app.url, LUCIA)
        timeline = await timeline_of(client, app.url, lead["id"])
    assert [s["status"] for s in found["status_history"]] == ["delivered"]
    assert [e["summary"] for e in timeline if e["kind"] == "status"] == ["delivered"]


async def test_duplicate_twilio_status_callback_is_one_status_history_entry(app: RunningApp) -> None:
    params = twilio_fixture("status_delivered")
    async with httpx.AsyncClient() as client:
        await post_twilio(client, app.url, twilio_fixture("inbound_text"))
        lead = await only_lead(client, app.url, LUCIA)
        sent = await record_sent_message(
            app.services.db,
            lead_id=lead["id"],
            channel="twilio-main",
            provider="twilio",
            provider_message_id=params["MessageSid"],
        )
        for _ in range(3):
            await post_twilio(client, app.url, params)
        found = await message(client, app.url, sent)
    assert [s["status"] for s in found["status_history"]] == ["delivered"]
