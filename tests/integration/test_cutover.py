"""Cutover from one channel to another over real HTTP: leadline's server, the provider sandbox, both databases.

The plan's credential check is a live call to the sandbox, which knows the right credentials; a test
that wants them refused hands the plan a configuration with a wrong token. Time is moved by passing
``now`` to the cutover functions, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from outbound_world import AUTH, World, open_world, point_channels_at
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import base_config
from leadline.cli import app as cli
from leadline.config import LeadlineConfig, config_from_mapping
from leadline.routing.cutover import (
    BlockerKind,
    CutoverBlocked,
    StillDraining,
    cutover_status,
    finish_cutover,
    plan,
    start_cutover,
)
from leadline.store.tables import conversation_windows, messages, routing_audit, routing_state
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel

META, TWILIO = "meta-main", "twilio-main"
OLD_LEAD = "+5215511110001"
OTHER_OLD_LEAD = "+5215511110002"
NEW_LEAD = "+5215522220001"
TWILIO_TESTER = "+5215533330001"
ORDER_UPDATE: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
}
TEMPLATE = {"name": "order_update", "language": "es_MX", "variables": ["Lucía", "8812"]}


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url) as opened:
        await opened.control("POST", "/templates/settings", {"delay": None})
        yield opened


def now() -> datetime:
    return datetime.now(UTC)


async def approve_template(world: World, *channels: str) -> None:
    """Define order_update and have it approved on ``channels`` (and nowhere else)."""
    definition = TemplateDefinition.model_validate(ORDER_UPDATE)
    await define_templates(world.services.db, [SourcedDefinition(definition, "test")])
    for name in channels:
        await submit_templates(world.services.db, world.config.channel(name))
    await world.control("POST", "/templates/decide", {})
    for name in channels:
        await sync_channel(world.services.db, world.config.channel(name))


async def customer_writes(world: World, provider: str, number: str, text: str = "Hola") -> None:
    answer = await world.control("POST", "/inbound", {"provider": provider, "from": number, "text": text})
    assert answer["leadline_status"] == 200, answer


async def ready_for_twilio(world: World) -> None:
    """Everything a cutover to Twilio needs: the template approved there, a webhook received from it."""
    await approve_template(world, META, TWILIO)
    await customer_writes(world, "twilio", TWILIO_TESTER, "test message after pointing the webhook")


def config_with(world: World, channel: str, **changes: Any) -> LeadlineConfig:
    """The world's configuration with ``channel`` changed (the sandbox still knows the right values)."""
    data = base_config(world.config.settings.database_url)
    point_channels_at(data, world.sandbox)
    for entry in data["channels"]:
        if entry["name"] == channel:
            entry.update(changes)
    return config_from_mapping(data)


async def plan_of(world: World, from_channel: str, to_channel: str, config: LeadlineConfig | None = None) -> Any:
    async with world.services.db.read() as conn:
        return await plan(conn, config or world.config, from_channel, to_channel)


async def audit_rows(world: World) -> list[dict[str, Any]]:
    async with world.services.db.read() as conn:
        rows = await conn.execute(select(routing_audit).order_by(routing_audit.c.id))
        return [dict(r._mapping) for r in rows]


async def sent_to(world: World, provider: str) -> list[str]:
    """Recipients of the sends a fake provider received, in order."""
    numbers = []
    for request in await world.provider_requests(provider):
        if provider == "meta":
            numbers.append("+" + json.loads(request["body"])["to"])
        else:
            form = dict(parse_qsl(request["body"]))
            numbers.append(form["To"].removeprefix("whatsapp:"))
    return numbers


# --------------------------------------------------------------------------------------------
# Plan


async def test_plan_names_each_template_not_approved_on_the_new_channel(world: World) -> None:
    await approve_template(world, META)
    await customer_writes(world, "twilio", TWILIO_TESTER)

    blockers = await plan_of(world, META, TWILIO)

    assert [(b.kind, b.channel, b.subject) for b in blockers] == [
        (BlockerKind.TEMPLATE_NOT_APPROVED, TWILIO, "order_update (es_MX)")
    ]
    assert "never submitted" in blockers[0].message
    assert f"leadline templates submit --channel {TWILIO} order_update" in blockers[0].message


async def test_plan_names_a_template_still_pending_on_the_new_channel(world: World) -> None:
    await approve_template(world, META)
    await submit_templates(world.services.db, world.config.channel(TWILIO))
    await customer_writes(world, "twilio", TWILIO_TESTER)

    [blocker] = await plan_of(world, META, TWILIO)

    assert blocker.kind is BlockerKind.TEMPLATE_NOT_APPROVED
    assert "its status there is PENDING" in blocker.message


async def test_plan_names_a_new_channel_that_never_received_a_webhook(world: World) -> None:
    await approve_template(world, META, TWILIO)
    await customer_writes(world, "meta", OLD_LEAD)  # webhooks from the old channel do not count

    blockers = await plan_of(world, META, TWILIO)

    assert [(b.kind, b.channel) for b in blockers] == [(BlockerKind.NO_WEBHOOK_RECEIVED, TWILIO)]
    assert "/webhooks/twilio" in blockers[0].message


async def test_a_status_report_from_the_new_channel_counts_as_a_webhook_received(world: World) -> None:
    await approve_template(world, META, TWILIO)
    await world.send(to=NEW_LEAD, channel=TWILIO, template=TEMPLATE)
    await world.drain()
    assert await plan_of(world, META, TWILIO) != []

    await world.flush()

    assert await plan_of(world, META, TWILIO) == []


@pytest.mark.parametrize(
    ("from_channel", "to_channel", "provider", "wrong", "code"),
    [
        (META, TWILIO, "twilio", {"auth_token": "0" * 32}, "20003"),
        (TWILIO, META, "meta", {"access_token": "an-expired-token"}, "190"),
    ],
)
async def test_plan_names_credentials_the_provider_refuses(
    world: World, from_channel: str, to_channel: str, provider: str, wrong: dict[str, str], code: str
) -> None:
    await approve_template(world, META, TWILIO)
    await customer_writes(world, provider, TWILIO_TESTER)
    assert await plan_of(world, from_channel, to_channel) == []

    blockers = await plan_of(world, from_channel, to_channel, config_with(world, to_channel, **wrong))

    assert [(b.kind, b.channel) for b in blockers] == [(BlockerKind.CREDENTIALS_FAILED, to_channel)]
    assert code in blockers[0].message and "HTTP 401" in blockers[0].message
    recorded = (await world.control("GET", f"/requests?provider={provider}"))["requests"]
    assert any(r["method"] == "GET" and r["path"].endswith((".json", "420000000000002")) for r in recorded)


async def test_plan_is_empty_when_the_new_channel_is_ready(world: World) -> None:
    await ready_for_twilio(world)

    assert await plan_of(world, META, TWILIO) == []
    async with world.http.post(
        f"{world.url}/v1/cutover/plan", json={"from": META, "to": TWILIO}, headers=AUTH
    ) as response:
        assert response.status == 200
        assert await response.json() == {"from": META, "to": TWILIO, "ready": True, "blockers": []}


async def test_plan_over_the_api_lists_blockers_and_refuses_an_unknown_channel(world: World) -> None:
    async with world.http.post(f"{world.url}/v1/cutover/plan", json={"from": META, "to": TWILIO}, headers=AUTH) as r:
        answer = await r.json()
    assert [b["kind"] for b in answer["blockers"]] == ["no_webhook_received"]
    assert answer["ready"] is False

    async with world.http.post(f"{world.url}/v1/cutover/plan", json={"from": META, "to": "nope"}, headers=AUTH) as r:
        assert r.status == 422
        assert "no channel named 'nope'" in (await r.json())["error"]["message"]


# --------------------------------------------------------------------------------------------
# Start


async def test_start_sends_new_conversations_to_the_new_channel_while_an_open_thread_drains_on_the_old(
    world: World,
) -> None:
    await ready_for_twilio(world)
    await customer_writes(world, "meta", OLD_LEAD, "¿Tienen envío gratis?")

    started = await start_cutover(world.services.db, world.config, META, TWILIO, actor="test:oncall", now=now())
    assert started.draining.count == 1

    old_reply = await world.send(to=OLD_LEAD, text="Sí, envío gratis hoy")
    new_conversation = await world.send(to=NEW_LEAD, template=TEMPLATE)
    await world.drain()

    assert (await world.message(old_reply))["channel"] == META
    assert (await world.message(new_conversation))["channel"] == TWILIO
    assert await sent_to(world, "meta") == [OLD_LEAD]
    assert await sent_to(world, "twilio") == [NEW_LEAD]
    reasons = {(await world.message_row(m))["content"]["routing"]["reason"] for m in (old_reply, new_conversation)}
    assert reasons == {"thread_in_flight", "default_channel"}


async def test_start_writes_the_routing_state_and_its_audit_in_one_change(world: World) -> None:
    await ready_for_twilio(world)
    at = now()

    await start_cutover(world.services.db, world.config, META, TWILIO, actor="test:oncall", now=at)

    async with world.services.db.read() as conn:
        state = (await conn.execute(select(routing_state))).one()
    assert (state.default_channel, state.cutover_from, state.cutover_to) == (TWILIO, META, TWILIO)
    assert (state.cutover_started_at, state.cutover_finished_at) == (at, None)
    assert (state.rollout_channel, state.rollout_percent) == (None, 0.0)
    [audit] = await audit_rows(world)
    assert (audit["actor"], audit["action"]) == ("test:oncall", "cutover_start")
    assert audit["before"]["default_channel"] is None
    assert audit["after"]["default_channel"] == TWILIO
    assert audit["after"]["cutover_started_at"] == at.isoformat()


async def test_starting_the_same_cutover_twice_changes_nothing(world: World) -> None:
    await ready_for_twilio(world)
    first = await start_cutover(world.services.db, world.config, META, TWILIO, actor="a", now=now())

    again = await start_cutover(world.services.db, world.config, META, TWILIO, actor="b", now=now())

    assert again.already and again.started_at == first.started_at
    assert [a["actor"] for a in await audit_rows(world)] == ["a"]


async def test_start_is_refused_while_the_plan_has_blockers_and_a_forced_start_audits_them(world: World) -> None:
    with pytest.raises(CutoverBlocked) as refused:
        await start_cutover(world.services.db, world.config, META, TWILIO, actor="test", now=now())
    assert [b.kind for b in refused.value.blockers] == [BlockerKind.NO_WEBHOOK_RECEIVED]
    assert await audit_rows(world) == []

    await start_cutover(world.services.db, world.config, META, TWILIO, actor="test", now=now(), force=True)

    [audit] = await audit_rows(world)
    assert [b["kind"] for b in audit["after"]["forced_past"]] == ["no_webhook_received"]


# --------------------------------------------------------------------------------------------
# Status and finish


async def draining_world(world: World) -> datetime:
    """Two old leads with open threads on Meta (the second wrote last), then the cutover; returns when
    the last of them drains, from the rows themselves."""
    await ready_for_twilio(world)
    await customer_writes(world, "meta", OLD_LEAD)
    await customer_writes(world, "meta", OTHER_OLD_LEAD)
    await start_cutover(world.services.db, world.config, META, TWILIO, actor="test", now=now())
    async with world.services.db.read() as conn:
        last_message = (await conn.execute(select(messages.c.created_at).where(messages.c.channel == META))).scalars()
        windows = (
            await conn.execute(
                select(conversation_windows.c.last_inbound_at).where(conversation_windows.c.channel == META)
            )
        ).scalars()
        return max(max(last_message) + timedelta(hours=24), max(windows) + timedelta(hours=24))


async def test_status_counts_draining_threads_their_oldest_and_when_they_drain(world: World) -> None:
    drains_at = await draining_world(world)
    async with world.services.db.read() as conn:
        first_lead_last = (
            await conn.execute(select(messages.c.created_at).where(messages.c.channel == META).order_by(messages.c.id))
        ).scalars()
        status = await cutover_status(conn, world.config, now=now())
    oldest = min(first_lead_last)

    assert (status.from_channel, status.to_channel, status.in_progress) == (META, TWILIO, True)
    assert (status.draining.count, status.draining_at_start, status.drained) == (2, 2, 0)
    assert status.draining.oldest_last_message_at == oldest
    assert status.draining.drains_at == drains_at
    traffic = {t.channel: (t.inbound, t.outbound) for t in status.traffic}
    assert traffic[META] == (2, 0) and traffic[TWILIO] == (1, 0)

    api = await world.v1("/cutover")
    assert api["draining"]["count"] == 2
    assert api["last_hour"][0] == {"channel": META, "in": 2, "out": 0, "failovers": 0}

    async with world.services.db.read() as conn:
        later = await cutover_status(conn, world.config, now=drains_at)
    assert (later.draining.count, later.drained, later.total) == (0, 2, 2)


async def test_status_counts_failovers_from_the_routing_reason_of_each_message(world: World) -> None:
    await draining_world(world)
    reply = await world.send(to=OLD_LEAD, text="Hola")
    async with world.services.db.transaction() as conn:
        row = (await conn.execute(select(messages.c.content).where(messages.c.id == reply))).scalar_one()
        rerouted = row | {"routing": {**row["routing"], "reason": "failover"}}
        await conn.execute(messages.update().where(messages.c.id == reply).values(content=rerouted))

    async with world.services.db.read() as conn:
        status = await cutover_status(conn, world.config, now=now())

    assert status.failovers_since_start == 1
    assert {t.channel: t.failovers for t in status.traffic}[META] == 1


async def test_finish_is_refused_while_threads_are_draining(world: World) -> None:
    await draining_world(world)

    with pytest.raises(StillDraining) as refused:
        async with world.services.db.transaction() as conn:
            await finish_cutover(conn, world.config, actor="test", now=now())

    assert refused.value.drain.count == 2
    assert "2 thread(s) are still draining on meta-main" in refused.value.message
    assert [a["action"] for a in await audit_rows(world)] == ["cutover_start"]


async def test_finish_with_force_ends_the_cutover_and_audits_the_threads_left_draining(world: World) -> None:
    await draining_world(world)
    at = now()

    async with world.services.db.transaction() as conn:
        finished = await finish_cutover(conn, world.config, actor="test:lead", now=at, force=True)

    assert finished.draining.count == 2
    async with world.services.db.read() as conn:
        assert (await conn.execute(select(routing_state.c.cutover_finished_at))).scalar_one() == at
    audit = (await audit_rows(world))[-1]
    assert (audit["actor"], audit["action"]) == ("test:lead", "cutover_finish")
    assert (audit["after"]["forced"], audit["after"]["draining_at_finish"]) == (True, 2)
    assert audit["after"]["cutover_finished_at"] == at.isoformat()


async def test_finish_succeeds_once_the_drain_has_passed(world: World) -> None:
    drains_at = await draining_world(world)

    async with world.services.db.transaction() as conn:
        finished = await finish_cutover(conn, world.config, actor="test", now=drains_at)

    assert finished.draining.count == 0
    audit = (await audit_rows(world))[-1]
    assert audit["after"]["forced"] is False and audit["after"]["draining_at_finish"] == 0
    async with world.services.db.read() as conn:
        assert not (await cutover_status(conn, world.config, now=drains_at)).in_progress


async def test_finish_with_a_small_drain_age_waits_for_the_window_not_only_the_drain_age(database_url: str) -> None:
    def small_drain_age(data: dict[str, Any], _crm: str) -> None:
        data["routing"] = {"drain_age_hours": 1}

    async with open_world(database_url, small_drain_age) as world:
        await customer_writes(world, "twilio", TWILIO_TESTER)
        await customer_writes(world, "meta", OLD_LEAD)
        start = now()
        await start_cutover(world.services.db, world.config, META, TWILIO, actor="test", now=start)

        async with world.services.db.transaction() as conn:
            with pytest.raises(StillDraining):
                await finish_cutover(conn, world.config, actor="test", now=start + timedelta(hours=2))
        async with world.services.db.transaction() as conn:
            await finish_cutover(conn, world.config, actor="test", now=start + timedelta(hours=24, seconds=1))


# --------------------------------------------------------------------------------------------
# The command


def write_config(tmp_path: Path, world: World) -> Path:
    lines = [f'database_url = "{world.config.settings.database_url}"', 'public_url = "https://leadline.example.com"']
    for channel in world.config.channels:
        lines.append("[[channels]]")
        for key, value in channel.model_dump(exclude_none=True).items():
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "leadline.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_the_cutover_command_plans_starts_shows_the_drain_and_refuses_to_finish_early(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    path = str(write_config(tmp_path, world))
    runner = CliRunner()

    async def run(*args: str) -> Any:
        # In a thread: the command runs its own event loop while the sandbox serves in this one.
        return await asyncio.to_thread(runner.invoke, cli, ["cutover", *args, "--config", path])

    planned = await run("plan", "--from", META, "--to", TWILIO)
    assert planned.exit_code == 1, planned.output
    assert "no_webhook_received" in planned.output

    await customer_writes(world, "twilio", TWILIO_TESTER)
    await customer_writes(world, "meta", OLD_LEAD)
    assert (await run("plan", "--from", META, "--to", TWILIO)).exit_code == 0

    started = await run("start", "--from", META, "--to", TWILIO, "--actor", "cli:test")
    assert started.exit_code == 0, started.output
    assert "1 thread(s) drain on meta-main" in started.output

    status = await run("status")
    assert status.exit_code == 0, status.output
    assert "drained 0/1 thread(s); 1 still draining" in status.output
    assert "Messages over the last hour" in status.output

    refused = await run("finish")
    assert refused.exit_code == 1
    assert "1 thread(s) are still draining on meta-main" in refused.output

    forced = await run("finish", "--force")
    assert forced.exit_code == 0, forced.output
    assert [(a["actor"], a["action"]) for a in await audit_rows(world)] == [
        ("cli:test", "cutover_start"),
        (f"cli:{getpass.getuser()}", "cutover_finish"),
    ]
