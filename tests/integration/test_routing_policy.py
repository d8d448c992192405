"""The routing policy over real HTTP against the provider sandbox, on SQLite and PostgreSQL: one test per
rule, the decision on the timeline, and the parallel run of two providers for one lead.

Flags are set through /v1/routing; circuits and ages are set in the database, where leadline keeps them.
Sends happen when the test drains the job table, and what each provider received is read from the
sandbox, so nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from outbound_world import AUTH, CUSTOMER, World, combine, open_world, sent_form
from sqlalchemy import update

from leadline.domain.routing import rollout_bucket
from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import channel_health, conversation_windows, messages
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel

NEW_NUMBER = "+5215587654321"
"""A customer leadline has never talked to."""


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url) as opened:
        yield opened


def drain_age(hours: float) -> Any:
    def tweak(data: dict[str, Any], crm_url: str) -> None:
        data["routing"] = {"drain_age_hours": hours}

    return combine(tweak)


async def put(world: World, path: str, body: dict[str, Any]) -> Any:
    async with world.http.put(f"{world.url}/v1/routing{path}", json=body, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def explain(world: World, to: str = CUSTOMER, **body: Any) -> dict[str, Any]:
    async with world.http.post(f"{world.url}/v1/routing/explain", json={"to": to, **body}, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def routing_of(world: World, message_id: str) -> dict[str, Any]:
    routing: dict[str, Any] = (await world.message(message_id))["content"]["routing"]
    return routing


async def sends_by_provider(world: World) -> dict[str, int]:
    requests = await world.provider_requests()
    return {p: sum(1 for r in requests if r["provider"] == p) for p in ("meta", "twilio")}


async def open_circuit(world: World, channel: str) -> None:
    now = datetime.now(UTC)
    async with world.services.db.transaction() as conn:
        await insert_ignoring_duplicates(
            conn,
            channel_health,
            [{"channel": channel, "state": "healthy", "consecutive_failures": 0, "updated_at": now}],
            conflict_columns=["channel"],
        )
        await conn.execute(
            update(channel_health)
            .where(channel_health.c.channel == channel)
            .values(
                state="open",
                consecutive_failures=1,
                last_error_code="payment_required",
                opened_at=now,
                next_probe_at=now + timedelta(hours=1),
                updated_at=now,
            )
        )


async def age_conversation(world: World, lead_id: str, hours: float) -> None:
    """As if the lead's whole conversation happened ``hours`` ago."""
    then = datetime.now(UTC) - timedelta(hours=hours)
    async with world.services.db.transaction() as conn:
        await conn.execute(
            update(conversation_windows).where(conversation_windows.c.lead_id == lead_id).values(last_inbound_at=then)
        )
        await conn.execute(
            update(messages).where(messages.c.lead_id == lead_id).values(created_at=then, occurred_at=then)
        )


async def lead_id_of(world: World, phone: str = CUSTOMER) -> str:
    [lead] = (await world.v1("/leads", phone=phone))["leads"]
    lead_id: str = lead["id"]
    return lead_id


# --------------------------------------------------------------------------------------------
# a. An explicit channel wins, if it is healthy


async def test_explicit_channel_wins_over_the_thread_and_the_flags(world: World) -> None:
    await world.inbound("meta", "Hola")
    await world.inbound("twilio", "Hola otra vez")  # the newest thread is on Twilio
    await put(world, "/default", {"channel": "twilio-main"})

    message_id = await world.send(channel="meta-main", text="Por Meta, como pediste")
    await world.drain()

    assert await routing_of(world, message_id) == {"channel": "meta-main", "reason": "requested", "passed_over": []}
    assert await sends_by_provider(world) == {"meta": 1, "twilio": 0}


async def test_explicit_channel_with_an_open_circuit_falls_through_the_policy(world: World) -> None:
    await world.inbound("meta", "Hola")
    await world.inbound("twilio", "Hola otra vez")
    await open_circuit(world, "meta-main")

    message_id = await world.send(channel="meta-main", text="¿Llega?")
    await world.drain()

    assert await routing_of(world, message_id) == {
        "channel": "twilio-main",
        "reason": "thread_in_flight",
        "passed_over": ["meta-main: circuit open"],
    }
    assert await sends_by_provider(world) == {"meta": 0, "twilio": 1}
    # A number with no thread falls to the flags.
    await put(world, "/default", {"channel": "meta-second"})
    assert await explain(world, NEW_NUMBER, channel="meta-main") == {
        "to": NEW_NUMBER,
        "lead_id": None,
        "channel": "meta-second",
        "reason": "default_channel",
        "passed_over": ["meta-main: circuit open"],
        "window_open": False,
    }


# --------------------------------------------------------------------------------------------
# b. A thread in flight stays where it is


async def test_open_window_keeps_the_lead_on_its_channel_whatever_the_flags_say(world: World) -> None:
    await world.inbound("twilio", "Hola por Twilio")
    await put(world, "/default", {"channel": "meta-main"})
    await put(world, f"/overrides/{CUSTOMER}", {"channel": "meta-main"})
    await put(world, "/rollout", {"channel": "meta-second", "percent": 100})

    message_id = await world.send(text="Te sigo por aquí")
    await world.drain()

    assert (await routing_of(world, message_id))["channel"] == "twilio-main"
    assert (await routing_of(world, message_id))["reason"] == "thread_in_flight"
    assert await sends_by_provider(world) == {"meta": 0, "twilio": 1}


async def test_conversation_younger_than_the_drain_age_stays_after_the_window_closes(database_url: str) -> None:
    async with open_world(database_url, drain_age(48)) as world:
        await world.inbound("twilio", "Hola")
        lead_id = await lead_id_of(world)
        await put(world, "/default", {"channel": "meta-main"})

        await age_conversation(world, lead_id, 30)
        drained = await explain(world)
        await age_conversation(world, lead_id, 50)
        moved = await explain(world)

    assert (drained["channel"], drained["reason"], drained["window_open"]) == ("twilio-main", "thread_in_flight", False)
    assert (moved["channel"], moved["reason"]) == ("meta-main", "default_channel")


# --------------------------------------------------------------------------------------------
# c. The flags: overrides, rollout, default


async def test_exact_number_override_beats_a_prefix(world: World) -> None:
    await put(world, "/overrides/+52", {"channel": "twilio-main"})
    await put(world, f"/overrides/{NEW_NUMBER}", {"channel": "meta-second"})

    exact = await explain(world, NEW_NUMBER)
    other = await explain(world, "+5215500000001")

    assert (exact["channel"], exact["reason"]) == ("meta-second", "number_override")
    assert (other["channel"], other["reason"]) == ("twilio-main", "prefix_override")


async def test_number_override_holds_for_every_spelling_of_the_number(world: World) -> None:
    await put(world, "/overrides/+525587654321", {"channel": "twilio-main"})  # the CRM's spelling, without the 1

    whatsapp_spelling = await explain(world, NEW_NUMBER)  # +52 1 55..., as WhatsApp spells Mexican mobiles

    assert (whatsapp_spelling["channel"], whatsapp_spelling["reason"]) == ("twilio-main", "number_override")


async def test_longest_matching_prefix_wins(world: World) -> None:
    await put(world, "/overrides/+52", {"channel": "twilio-main"})
    await put(world, "/overrides/+52155", {"channel": "meta-second"})
    await put(world, "/default", {"channel": "meta-main"})

    assert (await explain(world, "+5215512345678"))["channel"] == "meta-second"
    assert (await explain(world, "+5218112345678"))["channel"] == "twilio-main"
    assert (await explain(world, "+34600111222"))["channel"] == "meta-main"


ROLLOUT_NUMBERS = [f"+34600{i:06d}" for i in range(40)]


async def test_rollout_sends_the_numbers_its_hash_picks_and_never_flaps(world: World) -> None:
    await put(world, "/default", {"channel": "meta-main"})
    await put(world, "/rollout", {"channel": "twilio-main", "percent": 50})

    first = {n: (await explain(world, n))["channel"] for n in ROLLOUT_NUMBERS}
    again = {n: (await explain(world, n))["channel"] for n in ROLLOUT_NUMBERS}

    expected = {n: "twilio-main" if rollout_bucket(n) < 50 else "meta-main" for n in ROLLOUT_NUMBERS}
    assert first == expected
    assert again == first
    assert set(first.values()) == {"meta-main", "twilio-main"}  # the fixed set really splits


@pytest.mark.parametrize(("percent", "expected"), [(0, "meta-main"), (100, "twilio-main")])
async def test_rollout_at_0_and_100_percent_sends_nobody_and_everybody(
    world: World, percent: float, expected: str
) -> None:
    await put(world, "/default", {"channel": "meta-main"})
    await put(world, "/rollout", {"channel": "twilio-main", "percent": percent})

    decisions = [await explain(world, n) for n in ROLLOUT_NUMBERS]

    assert {d["channel"] for d in decisions} == {expected}
    assert {d["reason"] for d in decisions} == {"rollout" if percent == 100 else "default_channel"}


async def test_default_channel_takes_numbers_nothing_else_claims(world: World) -> None:
    before = await explain(world, NEW_NUMBER)
    await put(world, "/default", {"channel": "twilio-main"})
    after = await explain(world, NEW_NUMBER)

    assert (before["channel"], before["reason"]) == ("meta-main", "first_channel")  # configuration order
    assert (after["channel"], after["reason"]) == ("twilio-main", "default_channel")


# --------------------------------------------------------------------------------------------
# d. Templates only where approved


ORDER_UPDATE: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
}
TEMPLATE = {"name": "order_update", "language": "es_MX", "variables": ["Lucía", "8812"]}


async def approve_on(world: World, *channels: str) -> None:
    definition = TemplateDefinition.model_validate(ORDER_UPDATE)
    await define_templates(world.services.db, [SourcedDefinition(definition, "test")])
    for channel in channels:
        await submit_templates(world.services.db, world.config.channel(channel))
    await world.control("POST", "/templates/decide", {})
    for channel in channels:
        await sync_channel(world.services.db, world.config.channel(channel))


async def test_prefix_override_routes_a_real_send_to_a_new_lead(world: World) -> None:
    await approve_on(world, "meta-main", "twilio-main")
    await put(world, "/default", {"channel": "meta-main"})
    await put(world, "/overrides/+52", {"channel": "twilio-main"})

    moved = await world.send(to=NEW_NUMBER, template=TEMPLATE)
    stayed = await world.send(to="+34600111222", template=TEMPLATE)
    await world.drain()

    assert await routing_of(world, moved) == {"channel": "twilio-main", "reason": "prefix_override", "passed_over": []}
    assert await routing_of(world, stayed) == {"channel": "meta-main", "reason": "default_channel", "passed_over": []}
    assert await sends_by_provider(world) == {"meta": 1, "twilio": 1}


async def test_template_goes_only_through_a_channel_where_it_is_approved(world: World) -> None:
    await approve_on(world, "twilio-main")
    await put(world, "/default", {"channel": "meta-main"})

    message_id = await world.send(to=NEW_NUMBER, template=TEMPLATE)
    await world.drain()

    assert await routing_of(world, message_id) == {
        "channel": "twilio-main",
        "reason": "first_channel",
        "passed_over": ["meta-main: template not approved", "meta-second: template not approved"],
    }
    assert await sends_by_provider(world) == {"meta": 0, "twilio": 1}


async def test_template_approved_nowhere_is_refused_and_nothing_is_sent(world: World) -> None:
    definition = TemplateDefinition.model_validate(ORDER_UPDATE)
    await define_templates(world.services.db, [SourcedDefinition(definition, "test")])

    status, answer = await world.post_message({"to": NEW_NUMBER, "template": TEMPLATE})

    assert (status, answer["error"]["code"]) == (422, "template_not_approved")
    assert await world.drain() == 0


# --------------------------------------------------------------------------------------------
# The decision on the timeline


async def test_decision_and_reason_are_on_the_timeline_and_the_message(world: World) -> None:
    await world.inbound("meta", "Hola")
    await open_circuit(world, "meta-second")

    message_id = await world.send(channel="meta-second", text="Hola")

    expected = {"channel": "meta-main", "reason": "thread_in_flight", "passed_over": ["meta-second: circuit open"]}
    [event] = [e for e in await world.timeline(await lead_id_of(world)) if e["kind"] == "message_out"]
    assert event["message_id"] == message_id
    assert event["channel"] == "meta-main"
    assert event["data"]["routing"] == expected
    assert (await world.message(message_id))["content"]["routing"] == expected


async def test_each_decision_is_counted_by_channel_and_reason(world: World) -> None:
    async def counted() -> float:
        async with world.http.get(f"{world.url}/metrics") as response:
            text = await response.text()
        line = 'leadline_routing_decisions_total{channel="twilio-main",reason="thread_in_flight"}'
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)

    await world.inbound("twilio", "Hola")
    before = await counted()
    await world.send(text="Uno")
    await world.send(text="Dos")

    assert await counted() == before + 2


# --------------------------------------------------------------------------------------------
# Parallel run: both providers at once, one lead


async def test_inbound_on_meta_and_twilio_from_one_person_is_one_lead_and_one_timeline(world: World) -> None:
    await world.inbound("meta", "Hola por Meta")
    await world.inbound("twilio", "Hola por Twilio")

    lead_id = await lead_id_of(world)
    inbound = [e for e in await world.timeline(lead_id) if e["kind"] == "message_in"]

    assert [(e["channel"], e["summary"]) for e in inbound] == [
        ("meta-main", "Hola por Meta"),
        ("twilio-main", "Hola por Twilio"),
    ]


async def test_lead_writing_to_the_new_number_mid_thread_gets_one_reply_on_the_new_number(world: World) -> None:
    await world.inbound("meta", "Hola, ¿tienen envío gratis?")
    first = await world.send(text="Sí, envío gratis hoy")
    await world.drain()
    await world.inbound("twilio", "Te escribo al número nuevo", repeat=2)  # delivered twice by the provider

    reply = await world.send(text="Perfecto, seguimos por aquí")
    await world.drain()
    await world.drain()

    assert (await world.message(first))["channel"] == "meta-main"
    assert await routing_of(world, reply) == {"channel": "twilio-main", "reason": "thread_in_flight", "passed_over": []}
    twilio_sends = await world.provider_requests("twilio")
    assert len(twilio_sends) == 1
    assert ("Body", "Perfecto, seguimos por aquí") in sent_form(twilio_sends[0])
    assert len(await world.provider_requests("meta")) == 1  # only the first answer, none crossed
    inbound = [e for e in await world.timeline(await lead_id_of(world)) if e["kind"] == "message_in"]
    assert len(inbound) == 2
