"""Sending through leadline over real HTTP: POST /v1/messages, the worker, and the provider sandbox.

Each test runs on SQLite and on PostgreSQL. The app runs without its own worker; a test drains the job
table when it wants the sends to happen, on a worker clock it moves by hand, so nothing sleeps. What a
provider received is read from the sandbox's recorded requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from outbound_world import (
    CUSTOMER,
    CUSTOMER_DIGITS,
    META_URL_PATH,
    TWILIO_URL_PATH,
    World,
    open_world,
    sent_form,
    sent_json,
)
from sqlalchemy import func, select, text

from conftest import META_APP_SECRET, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN
from leadline.providers.meta.signature import meta_signature
from leadline.store import jobs as job_store
from leadline.store.tables import jobs, leads, messages, timeline_events
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url) as opened:
        yield opened


def twilio_basic_auth() -> str:
    return "Basic " + base64.b64encode(f"{TWILIO_ACCOUNT_SID}:{TWILIO_AUTH_TOKEN}".encode()).decode()


async def open_window(world: World, provider: str = "meta") -> dict[str, Any]:
    """The customer writes first, so free-form messages may go to them on that channel."""
    return await world.inbound(provider, "Hola, ¿tienen envío gratis?")


async def lead_of(world: World, message_id: str) -> str:
    lead_id: str = (await world.message(message_id))["lead_id"]
    return lead_id


# --------------------------------------------------------------------------------------------
# What each provider receives


async def test_meta_text_reaches_the_graph_api_with_bearer_token_and_reference_body(world: World) -> None:
    await open_window(world)
    message_id = await world.send(text="Sí, envío gratis hoy: https://shop.example/t/8812", preview_url=True)

    assert await world.drain() >= 1

    [sent] = await world.provider_requests("meta")
    assert sent["url"] == world.sandbox.url + META_URL_PATH
    assert sent["headers"]["Authorization"] == "Bearer meta-access-token"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent_json(sent) == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": "text",
        "text": {"body": "Sí, envío gratis hoy: https://shop.example/t/8812", "preview_url": True},
    }
    message = await world.message(message_id)
    assert message["status"] == "accepted"
    assert message["provider_message_id"].startswith("wamid.")


async def test_meta_reply_quotes_the_customers_message(world: World) -> None:
    injected = await open_window(world)
    lead = (await world.v1("/leads", phone=CUSTOMER))["leads"][0]
    [inbound] = [e for e in await world.timeline(lead["id"]) if e["kind"] == "message_in"]

    await world.send(text="¡Claro!", reply_to=inbound["message_id"])
    await world.drain()

    [sent] = await world.provider_requests("meta")
    assert sent_json(sent)["context"] == {"message_id": injected["message_id"]}


@pytest.mark.parametrize(
    ("media", "expected_type", "expected_object"),
    [
        (
            {"kind": "image", "url": "https://cdn.example/p/1.jpg", "caption": "Modelo 1"},
            "image",
            {"link": "https://cdn.example/p/1.jpg", "caption": "Modelo 1"},
        ),
        (
            {"kind": "document", "url": "https://cdn.example/f.pdf", "caption": "Factura", "filename": "F-1.pdf"},
            "document",
            {"link": "https://cdn.example/f.pdf", "caption": "Factura", "filename": "F-1.pdf"},
        ),
        ({"kind": "audio", "url": "https://cdn.example/a.ogg"}, "audio", {"link": "https://cdn.example/a.ogg"}),
    ],
)
async def test_meta_media_is_sent_by_link(
    world: World, media: dict[str, Any], expected_type: str, expected_object: dict[str, Any]
) -> None:
    await open_window(world)
    await world.send(media=media)
    await world.drain()

    [sent] = await world.provider_requests("meta")
    body = sent_json(sent)
    assert (body["type"], body[expected_type]) == (expected_type, expected_object)
    assert body["to"] == CUSTOMER_DIGITS


async def test_twilio_text_is_a_form_post_with_basic_auth_and_leadlines_status_callback(world: World) -> None:
    await open_window(world, "twilio")
    message_id = await world.send(text="Hola desde Twilio")

    await world.drain()

    [sent] = await world.provider_requests("twilio")
    assert sent["url"] == world.sandbox.url + TWILIO_URL_PATH
    assert sent["headers"]["Authorization"] == twilio_basic_auth()
    assert sent["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent_form(sent) == [
        ("To", f"whatsapp:{CUSTOMER}"),
        ("From", "whatsapp:+15550001234"),
        ("Body", "Hola desde Twilio"),
        ("StatusCallback", "https://leadline.example.com/webhooks/twilio"),
    ]
    message = await world.message(message_id)
    assert (message["channel"], message["status"]) == ("twilio-main", "accepted")
    assert message["provider_message_id"].startswith("SM")


async def test_twilio_media_is_a_media_url_with_the_caption_as_body(world: World) -> None:
    await open_window(world, "twilio")
    await world.send(media={"kind": "image", "url": "https://cdn.example/p/1.jpg", "caption": "Modelo 1"})
    await world.drain()

    [sent] = await world.provider_requests("twilio")
    form = dict(sent_form(sent))
    assert (form["MediaUrl"], form["Body"]) == ("https://cdn.example/p/1.jpg", "Modelo 1")


ORDER_UPDATE: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
    "footer": "Tienda Ejemplo",
}


async def approve_order_update(world: World) -> None:
    """Define the template and have both providers approve it, through the template library."""
    await world.control("POST", "/templates/settings", {"delay": None})
    definition = TemplateDefinition.model_validate(ORDER_UPDATE)
    await define_templates(world.services.db, [SourcedDefinition(definition, "test")])
    for name in ("meta-main", "twilio-main"):
        await submit_templates(world.services.db, world.config.channel(name))
    await world.control("POST", "/templates/decide", {})
    for name in ("meta-main", "twilio-main"):
        await sync_channel(world.services.db, world.config.channel(name))


TEMPLATE = {"name": "order_update", "language": "es_MX", "variables": ["Lucía", "8812"]}


async def test_meta_template_send_carries_the_approved_name_language_and_parameters(world: World) -> None:
    await approve_order_update(world)
    message_id = await world.send(channel="meta-main", template=TEMPLATE)

    await world.drain()

    [sent] = await world.provider_requests("meta")
    assert sent_json(sent) == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "es_MX"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Lucía"}, {"type": "text", "text": "8812"}]}
            ],
        },
    }
    message = await world.message(message_id)
    assert (message["kind"], message["status"]) == ("template", "accepted")
    assert message["text"] == "Hola Lucía, tu pedido 8812 va en camino.\nTienda Ejemplo"


async def test_twilio_template_send_is_the_content_sid_with_its_variables(world: World) -> None:
    await approve_order_update(world)
    await world.send(channel="twilio-main", template=TEMPLATE)

    await world.drain()

    [sent] = await world.provider_requests("twilio")
    form = dict(sent_form(sent))
    assert form["ContentSid"].startswith("HX")
    assert json.loads(form["ContentVariables"]) == {"1": "Lucía", "2": "8812"}
    assert "Body" not in form


async def test_template_goes_out_when_the_window_is_closed(world: World) -> None:
    await approve_order_update(world)
    status, answer = await world.post_message({"to": CUSTOMER, "template": TEMPLATE})
    assert (status, answer["channel"]) == (202, "meta-main")


# --------------------------------------------------------------------------------------------
# The 24-hour window


async def test_free_form_text_to_a_customer_who_never_wrote_is_refused_with_needs_template(world: World) -> None:
    status, answer = await world.post_message({"to": CUSTOMER, "text": "Hola"})

    assert status == 422
    assert answer["error"]["code"] == "needs_template"
    async with world.services.db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(messages))).scalar_one() == 0
        assert (await conn.execute(select(func.count()).select_from(jobs))).scalar_one() == 0


def old_meta_text(wamid: str, at: datetime) -> bytes:
    entry = {
        "id": "310000000000001",
        "changes": [
            {
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001234", "phone_number_id": "420000000000002"},
                    "contacts": [{"profile": {"name": "Lucía"}, "wa_id": CUSTOMER_DIGITS}],
                    "messages": [
                        {
                            "from": CUSTOMER_DIGITS,
                            "id": wamid,
                            "timestamp": str(int(at.timestamp())),
                            "type": "text",
                            "text": {"body": "Hola"},
                        }
                    ],
                },
            }
        ],
    }
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


async def test_free_form_text_25_hours_after_the_customers_last_message_is_refused(world: World) -> None:
    body = old_meta_text("wamid.OLD1", datetime.now(UTC) - timedelta(hours=25))
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta_signature(META_APP_SECRET, body)}
    async with world.http.post(f"{world.url}/webhooks/meta", data=body, headers=headers) as response:
        assert response.status == 200

    status, answer = await world.post_message({"to": CUSTOMER, "text": "¿Sigues ahí?"})

    assert (status, answer["error"]["code"]) == (422, "needs_template")


async def test_window_is_per_channel_and_routing_follows_the_open_thread(world: World) -> None:
    await open_window(world, "twilio")

    refused, answer = await world.post_message({"to": CUSTOMER, "channel": "meta-main", "text": "Hola"})
    routed, accepted = await world.post_message({"to": CUSTOMER, "text": "Hola"})

    assert (refused, answer["error"]["code"]) == (422, "needs_template")
    assert (routed, accepted["channel"]) == (202, "twilio-main")


async def test_closed_window_with_a_fallback_template_sends_the_template(world: World) -> None:
    await approve_order_update(world)
    message_id = await world.send(text="Hola, ¿seguimos?", fallback_template=TEMPLATE)

    await world.drain()

    [sent] = await world.provider_requests("meta")
    assert sent_json(sent)["type"] == "template"
    assert (await world.message(message_id))["kind"] == "template"


async def test_reply_to_a_message_of_another_channel_is_refused(world: World) -> None:
    await open_window(world, "twilio")
    await open_window(world, "meta")
    lead = (await world.v1("/leads", phone=CUSTOMER))["leads"][0]
    twilio_message = next(
        e["message_id"]
        for e in await world.timeline(lead["id"])
        if e["kind"] == "message_in" and e["channel"] == "twilio-main"
    )

    status, answer = await world.post_message(
        {"to": CUSTOMER, "channel": "meta-main", "text": "Hola", "reply_to": twilio_message}
    )

    assert (status, answer["error"]["code"]) == (422, "reply_to_other_channel")


# --------------------------------------------------------------------------------------------
# Idempotency and the outbox


async def test_same_idempotency_key_returns_the_same_message_and_sends_once(world: World) -> None:
    await open_window(world)
    body = {"to": CUSTOMER, "text": "Pedido confirmado", "idempotency_key": "order-8812-confirmed"}

    first = await world.post_message(body)
    second = await world.post_message(body)
    by_header = await world.post_message(
        {k: v for k, v in body.items() if k != "idempotency_key"}, {"Idempotency-Key": "order-8812-confirmed"}
    )
    await world.drain()
    third = await world.post_message(body)
    await world.drain()

    assert first[0] == second[0] == by_header[0] == third[0] == 202
    assert first[1]["id"] == second[1]["id"] == by_header[1]["id"] == third[1]["id"]
    assert third[1]["status"] == "accepted"
    assert len(await world.provider_requests("meta")) == 1


async def test_same_idempotency_key_sent_concurrently_creates_one_message_and_one_send(world: World) -> None:
    await open_window(world)
    body = {"to": CUSTOMER, "text": "Pedido confirmado", "idempotency_key": "order-8812-race"}

    answers = await asyncio.gather(*(world.post_message(body) for _ in range(12)))
    await world.drain()

    assert {status for status, _ in answers} == {202}
    assert len({answer["id"] for _, answer in answers}) == 1
    assert len(await world.provider_requests("meta")) == 1
    async with world.services.db.read() as conn:
        assert (
            await conn.execute(select(func.count()).select_from(messages).where(messages.c.direction == "out"))
        ).scalar_one() == 1
        assert (
            await conn.execute(select(func.count()).select_from(jobs).where(jobs.c.kind == "send_message"))
        ).scalar_one() == 1


async def test_idempotency_key_reused_for_another_message_is_a_conflict(world: World) -> None:
    await open_window(world)
    await world.send(text="Uno", idempotency_key="k-1")

    status, answer = await world.post_message({"to": CUSTOMER, "text": "Dos", "idempotency_key": "k-1"})

    assert (status, answer["error"]["code"]) == (409, "idempotency_key_reused")


async def refuse_job_inserts(world: World) -> None:
    """A trigger that makes every insert into the job table fail, as a crash at that point would."""
    async with world.services.db.transaction() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(
                text("CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'no jobs'); END")
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse_jobs() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'no jobs'; END $$"
                    " LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                text("CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_jobs()")
            )


async def allow_job_inserts(world: World) -> None:
    async with world.services.db.transaction() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(text("DROP TRIGGER refuse_jobs"))
        else:
            await conn.execute(text("DROP TRIGGER refuse_jobs ON jobs"))
            await conn.execute(text("DROP FUNCTION refuse_jobs()"))


async def test_message_and_its_send_job_are_written_together_or_not_at_all(world: World) -> None:
    await open_window(world)
    async with world.services.db.read() as conn:
        timeline_before = (await conn.execute(select(func.count()).select_from(timeline_events))).scalar_one()
    await refuse_job_inserts(world)
    try:
        status, _ = await world.post_message({"to": CUSTOMER, "text": "Nunca", "idempotency_key": "atomic-1"})
    finally:
        await allow_job_inserts(world)

    assert status == 500
    async with world.services.db.read() as conn:
        outbound = select(func.count()).select_from(messages).where(messages.c.direction == "out")
        assert (await conn.execute(outbound)).scalar_one() == 0
        assert (await conn.execute(select(func.count()).select_from(timeline_events))).scalar_one() == timeline_before
    # The key was never used: the same request now succeeds and is sent.
    message_id = await world.send(text="Nunca", idempotency_key="atomic-1")
    await world.drain()
    assert (await world.message(message_id))["status"] == "accepted"


# --------------------------------------------------------------------------------------------
# Per-lead order


async def test_a_leads_second_message_waits_until_the_first_is_accepted(world: World) -> None:
    await open_window(world)
    await world.fault(provider="meta", mode="throttle", code=130429, count=1)
    first = await world.send(text="primero")
    second = await world.send(text="segundo")

    await world.drain()
    held = [sent_json(r)["text"]["body"] for r in await world.provider_requests("meta")]
    world.clock.advance(5)
    await world.drain()

    assert held == ["primero"]  # throttled, and the second did not overtake it
    sent = [sent_json(r)["text"]["body"] for r in await world.provider_requests("meta")]
    assert sent == ["primero", "primero", "segundo"]
    assert [(await world.message(m))["status"] for m in (first, second)] == ["accepted", "accepted"]


async def test_another_leads_message_is_not_held_up_by_a_retrying_one(world: World) -> None:
    await open_window(world)
    await world.control("POST", "/inbound", {"provider": "meta", "from": "+5215587654321", "text": "Hola también"})
    await world.fault(provider="meta", mode="throttle", code=130429, count=1)
    await world.send(text="para Lucía")
    other = await world.send(to="+5215587654321", text="para Marta")

    await world.drain()

    assert (await world.message(other))["status"] == "accepted"


# --------------------------------------------------------------------------------------------
# Statuses


@pytest.mark.parametrize("provider", ["meta", "twilio"])
async def test_status_webhooks_advance_the_message_to_read(world: World, provider: str) -> None:
    await open_window(world, provider)
    message_id = await world.send(text="¿Te llegó?")
    await world.drain()

    await world.flush()

    message = await world.message(message_id)
    assert message["status"] == "read"
    assert [s["status"] for s in message["status_history"]] == ["sent", "delivered", "read"]
    statuses = [e["data"]["status"] for e in await world.timeline(message["lead_id"]) if e["kind"] == "status"]
    assert statuses == ["accepted", "sent", "delivered", "read"]


async def test_late_delivered_status_does_not_undo_read(world: World) -> None:
    await open_window(world)
    message_id = await world.send(text="¿Te llegó?")
    await world.drain()
    pending = (await world.control("GET", "/statuses"))["pending"]
    assert [p["status"] for p in pending] == ["sent", "delivered", "read"]

    await world.flush()
    # The provider delivers "delivered" again, late: the message stays read.
    wamid = (await world.message(message_id))["provider_message_id"]
    body = status_body(wamid, "delivered")
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta_signature(META_APP_SECRET, body)}
    async with world.http.post(f"{world.url}/webhooks/meta", data=body, headers=headers) as response:
        assert response.status == 200

    assert (await world.message(message_id))["status"] == "read"


def status_body(wamid: str, status: str) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001234", "phone_number_id": "420000000000002"},
        "statuses": [
            {
                "id": wamid,
                "status": status,
                "timestamp": str(int(datetime.now(UTC).timestamp())),
                "recipient_id": CUSTOMER_DIGITS,
            }
        ],
    }
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "310000000000001", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(envelope).encode()


@pytest.mark.parametrize("provider", ["meta", "twilio"])
async def test_statuses_committed_before_the_send_answer_are_applied_when_it_is(
    database_url: str, provider: str
) -> None:
    async with open_world(database_url, statuses_before_answers=True) as world:
        await open_window(world, provider)
        message_id = await world.send(text="¿Te llegó?")

        await world.drain()

        message = await world.message(message_id)
        assert message["status"] == "read"
        assert [s["status"] for s in message["status_history"]] == ["sent", "delivered", "read"]
        events = [
            (e["kind"], e["data"].get("status"))
            for e in await world.timeline(message["lead_id"])
            if e["message_id"] == message_id
        ]
        # Once the provider id is known, the best status already on record is applied at once.
        assert events == [("message_out", None), ("status", "accepted"), ("status", "read")]


async def test_failed_status_after_acceptance_keeps_the_providers_code_and_title(world: World) -> None:
    await open_window(world)
    await world.fault(provider="meta", mode="async_error", code=131026, count=1)
    message_id = await world.send(text="Hola")
    await world.drain()

    await world.flush()

    message = await world.message(message_id)
    assert message["status"] == "failed"
    assert message["error"]["code"] == "131026"
    [failed] = [e for e in await world.timeline(message["lead_id"]) if e["data"].get("status") == "failed"]
    assert failed["summary"].startswith("failed: 131026 ")


# --------------------------------------------------------------------------------------------
# A worker that dies between claiming a send and committing its result


async def claim_send_as(world: World, worker_id: str) -> job_store.Job:
    async with world.services.db.transaction() as conn:
        [job] = await job_store.claim(
            conn,
            worker_id=worker_id,
            now=world.clock.catch_up(),
            lease=timedelta(seconds=world.config.settings.worker.lease_seconds),
            limit=1,
            kinds=["send_message"],
        )
    return job


@pytest.mark.parametrize("reached_provider", [True, False])
async def test_send_of_a_worker_that_died_mid_job_is_taken_over_after_its_lease(
    world: World, reached_provider: bool
) -> None:
    await open_window(world)
    message_id = await world.send(text="Tu pedido sale hoy")
    job = await claim_send_as(world, "worker-that-dies")
    if reached_provider:
        # It sent, and died before committing what the provider answered.
        row = await world.message_row(message_id)
        await world.services.clients.client("meta-main").send_text(CUSTOMER, row["content"]["text"])

    assert await world.drain("second-worker") == 0  # the lease still holds
    world.clock.advance(world.config.settings.worker.lease_seconds + 1)
    await world.drain("second-worker")

    sends = await world.provider_requests("meta")
    assert len(sends) == (2 if reached_provider else 1)
    message = await world.message(message_id)
    assert message["status"] == "accepted"
    outbound = [e for e in await world.timeline(message["lead_id"]) if e["kind"] == "message_out"]
    assert [e["message_id"] for e in outbound] == [message_id]
    [row] = [j for j in await world.job_rows("send_message") if j["id"] == job.id]
    assert (row["state"], row["locked_by"], row["attempts"]) == ("done", "second-worker", 2)


async def test_a_worker_back_from_the_dead_cannot_finish_a_job_taken_over(world: World) -> None:
    await open_window(world)
    await world.send(text="Tu pedido sale hoy")
    stale = await claim_send_as(world, "worker-that-stalls")
    world.clock.advance(world.config.settings.worker.lease_seconds + 1)
    await world.drain("second-worker")

    async with world.services.db.transaction() as conn:
        assert await job_store.finish(conn, stale, now=world.clock.now()) is False
    assert len(await world.provider_requests("meta")) == 1


# --------------------------------------------------------------------------------------------
# Two workers in one process, each with its own database pool


async def test_two_workers_draining_at_once_send_each_message_once(world: World) -> None:
    from leadline.pipeline.worker import Worker
    from leadline.store.db import Database

    customers = [f"+52155100{i:05d}" for i in range(30)]
    for number in customers:
        await world.control("POST", "/inbound", {"provider": "meta", "from": number, "text": "Hola"})
    ids = [await world.send(to=number, text=f"hola {number}") for number in customers]
    world.clock.catch_up()
    other_db = Database(world.config.settings.database_url)
    try:
        settings = world.config.settings.worker.model_copy(update={"batch_size": 4})
        first = Worker(world.services.db, world.services.job_handlers, settings, worker_id="w1", clock=world.clock.now)
        second = Worker(other_db, world.services.job_handlers, settings, worker_id="w2", clock=world.clock.now)
        await asyncio.gather(first.run_until_idle(), second.run_until_idle())
    finally:
        await other_db.close()

    bodies = [sent_json(r)["text"]["body"] for r in await world.provider_requests("meta")]
    assert sorted(bodies) == sorted(f"hola {n}" for n in customers)
    assert {(await world.message(m))["status"] for m in ids} == {"accepted"}
    async with world.services.db.read() as conn:
        leads_count = (await conn.execute(select(func.count()).select_from(leads))).scalar_one()
    assert leads_count == len(customers)
