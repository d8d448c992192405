"""CRM callbacks over real HTTP: every timeline event, signed, in order per lead, again after a failure.

The CRM is a small aiohttp receiver on an ephemeral port; the events come from the real loop (a customer
writes through the sandbox, the CRM answers through POST /v1/messages, the sandbox reports statuses).
Retries happen on the worker clock, moved by hand.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from outbound_world import CRM_SECRET, CUSTOMER, Tweak, World, combine, open_world, with_subscriber

from leadline.pipeline.callbacks import sign_callback, verify_callback


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url, with_subscriber("crm")) as opened:
        yield opened


async def conversation(world: World) -> str:
    """A customer writes, the CRM answers, the answer is sent and read; returns the lead's id."""
    await world.inbound("meta", "Hola, ¿tienen envío gratis?")
    message_id = await world.send(text="¡Sí! Envío gratis hoy.")
    await world.drain()
    await world.flush()
    await world.drain()
    return str((await world.message(message_id))["lead_id"])


def as_event(body: dict[str, Any]) -> tuple[str, str | None]:
    return body["type"], body["data"].get("status")


async def test_every_timeline_event_reaches_the_crm_signed_and_in_order(world: World) -> None:
    lead_id = await conversation(world)

    timeline = [(e["kind"], e["data"].get("status")) for e in await world.timeline(lead_id)]
    delivered = [c.json() for c in world.crm.delivered()]
    assert timeline == [
        ("message_in", None),
        ("message_out", None),
        ("status", "accepted"),
        ("status", "sent"),
        ("status", "delivered"),
        ("status", "read"),
    ]
    assert [as_event(body) for body in delivered] == timeline
    assert world.crm.all_signed(CRM_SECRET)
    assert not world.crm.all_signed("not-the-secret")
    assert {body["lead"]["id"] for body in delivered} == {lead_id}
    assert {body["lead"]["phone"] for body in delivered} == {CUSTOMER}
    assert [c.event_id for c in world.crm.received] == [body["id"] for body in delivered]
    inbound, outbound = delivered[0]["message"], delivered[1]["message"]
    assert (inbound["direction"], inbound["text"]) == ("in", "Hola, ¿tienen envío gratis?")
    assert (outbound["direction"], outbound["channel"], outbound["text"]) == (
        "out",
        "meta-main",
        "¡Sí! Envío gratis hoy.",
    )


async def test_each_event_is_delivered_once_when_nothing_fails(world: World) -> None:
    await conversation(world)
    world.clock.advance(3600)
    await world.drain()

    ids = [c.event_id for c in world.crm.received]
    assert len(ids) == len(set(ids)) == 6


async def test_crm_answering_500_gets_the_event_again_and_later_events_wait_for_it(world: World) -> None:
    world.crm.fail_first = 1
    await world.inbound("meta", "Hola")
    await world.drain()
    [refused] = world.crm.received
    assert refused.answered == 500

    message_id = await world.send(text="¡Hola!")
    await world.drain()
    # The answer went out, but its callbacks wait behind the lead's refused one.
    assert (await world.message(message_id))["status"] == "accepted"
    assert len(world.crm.received) == 1

    world.clock.advance(60)
    await world.drain()

    assert [c.event_id for c in world.crm.received][:2] == [refused.event_id, refused.event_id]
    assert [as_event(c.json()) for c in world.crm.delivered()] == [
        ("message_in", None),
        ("message_out", None),
        ("status", "accepted"),
    ]
    assert world.crm.all_signed()


async def test_one_leads_failing_callback_does_not_hold_up_another_leads(world: World) -> None:
    await world.inbound("meta", "Hola")
    world.crm.fail_first = 1
    await world.drain()
    await world.control("POST", "/inbound", {"provider": "meta", "from": "+5215587654321", "text": "Buenas"})

    await world.drain()

    delivered = [c.json() for c in world.crm.delivered()]
    assert [(body["lead"]["phone"], body["type"]) for body in delivered] == [("+5215587654321", "message_in")]


def forwarding_rule(data: dict[str, Any], crm_url: str) -> None:
    data["router"] = [
        {
            "name": "pricing-to-sales",
            "when": {"keyword": ["precio"]},
            "then": [{"handler": "forward_to_crm", "args": {"subscriber": "sales"}}],
        }
    ]


async def test_subscriber_without_all_events_gets_only_what_a_rule_forwards(database_url: str) -> None:
    tweak: Tweak = combine(with_subscriber("sales", all_events=False), forwarding_rule)
    async with open_world(database_url, tweak) as world:
        await world.inbound("meta", "Hola")
        await world.inbound("meta", "¿Qué precio tiene el envío?")
        await world.send(text="Es gratis")
        await world.drain()
        await world.flush()
        await world.drain()

        delivered = [c.json() for c in world.crm.delivered()]
        assert [(body["type"], body["message"]["text"]) for body in delivered] == [
            ("message_in", "¿Qué precio tiene el envío?")
        ]
        assert world.crm.all_signed()


def test_a_callback_signature_is_refused_when_stale_or_tampered() -> None:
    body = b'{"id":"in:meta:wamid.1"}'
    now = int(time.time())
    header = sign_callback(CRM_SECRET, now, body)

    assert verify_callback(CRM_SECRET, header, body, now=now)
    assert not verify_callback(CRM_SECRET, header, body + b" ", now=now)
    assert not verify_callback("another-secret", header, body, now=now)
    assert not verify_callback(CRM_SECRET, header, body, now=now + 301)
    assert not verify_callback(CRM_SECRET, "v1=abc", body, now=now)
