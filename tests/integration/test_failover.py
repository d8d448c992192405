"""Channel health and automatic failover, over real HTTP against the sandbox, on SQLite and PostgreSQL.

The world has one Meta number (meta-main) and one Twilio sender (twilio-main), both with an approved
template. The sandbox's Meta answers 131042 (payment problem), 5xx or rate limits on demand; the workers
run on a clock the test moves, so probes come due without anyone sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from outbound_world import CUSTOMER, Tweak, World, combine, open_world, sent_form, with_worker
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from leadline.cli import app as cli_app
from leadline.config import RoutingConfig
from leadline.routing.health import FailureKind, get_circuit, record_channel_failure, record_channel_success
from leadline.store.db import Database
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel

ORDER_UPDATE: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
    "footer": "Tienda Ejemplo",
}
TEMPLATE = {"name": "order_update", "language": "es_MX", "variables": ["Lucía", "8812"]}
PROBE_AFTER = 30.0
OTHER_CUSTOMER = "+5215587654321"


def failover_world(mode: str = "hold") -> Tweak:
    """meta-main and twilio-main only (the sandbox faults all Meta numbers at once), routing as given."""

    def tweak(data: dict[str, Any], crm_url: str) -> None:
        data["channels"] = [c for c in data["channels"] if c["name"] != "meta-second"]
        data["routing"] = {
            "failure_threshold": 3,
            "probe_after_seconds": PROBE_AFTER,
            "free_form_on_failover": mode,
            "reengagement_template": {"name": "order_update", "language": "es_MX", "variables": ["Lucía", "8812"]},
        }

    return tweak


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url, failover_world()) as opened:
        await approve_order_update(opened)
        yield opened


async def approve_order_update(world: World) -> None:
    await world.control("POST", "/templates/settings", {"delay": None})
    definition = TemplateDefinition.model_validate(ORDER_UPDATE)
    await define_templates(world.services.db, [SourcedDefinition(definition, "test")])
    for name in ("meta-main", "twilio-main"):
        await submit_templates(world.services.db, world.config.channel(name))
    await world.control("POST", "/templates/decide", {})
    for name in ("meta-main", "twilio-main"):
        await sync_channel(world.services.db, world.config.channel(name))


async def meta_payment_problem(world: World, **spec: Any) -> None:
    """From now on (until DELETE /_sandbox/faults) Meta refuses every send with 131042."""
    await world.fault(provider="meta", mode="error", code=131042, http_status=400, **spec)


async def health_of(world: World, channel: str) -> dict[str, Any]:
    [found] = [c for c in (await world.v1("/health"))["channels"] if c["name"] == channel]
    return found


async def held(world: World) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await world.v1("/held"))["messages"]
    return found


async def events(world: World, message_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    lead_id = (await world.message(message_id))["lead_id"]
    return [e for e in await world.timeline(lead_id) if kind is None or e["kind"] == kind]


async def metric(world: World, name: str, **labels: str) -> float:
    async with world.http.get(f"{world.url}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables at full width


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), catch_exceptions=False)


def config_file(world: World, tmp_path: Path) -> Path:
    """The world's configuration as a TOML file, for the ``leadline`` command."""

    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)  # JSON strings, numbers and booleans are TOML too

    lines = [f"database_url = {value(world.config.settings.database_url)}"]
    for channel in world.config.channels:
        lines.append("[[channels]]")
        for key, v in channel.model_dump(mode="json").items():
            if v is not None and not isinstance(v, dict | list):
                lines.append(f"{key} = {value(v)}")
    path = tmp_path / "leadline.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# What opens a circuit, and what does not


async def test_meta_payment_problem_opens_the_circuit_at_once_and_the_queued_template_is_sent_once_via_twilio(
    world: World,
) -> None:
    failovers_before = await metric(world, "leadline_failovers_total", **{"from": "meta-main", "to": "twilio-main"})
    message_id = await world.send(template=TEMPLATE)
    assert (await world.message(message_id))["channel"] == "meta-main"
    await meta_payment_problem(world)

    await world.drain()
    failed_at = world.clock.now()

    assert len(await world.provider_requests("meta")) == 1  # one failing Meta attempt
    [twilio_send] = await world.provider_requests("twilio")  # one Twilio send
    assert json.loads(dict(sent_form(twilio_send))["ContentVariables"]) == {"1": "Lucía", "2": "8812"}
    message = await world.message(message_id)
    assert (message["id"], message["channel"], message["provider"], message["status"]) == (
        message_id,
        "twilio-main",
        "twilio",
        "accepted",
    )
    meta = await health_of(world, "meta-main")
    assert (meta["circuit"], meta["healthy"], meta["last_error_code"]) == ("open", False, "131042")
    assert datetime.fromisoformat(meta["opened_at"]) == failed_at
    assert datetime.fromisoformat(meta["next_probe_at"]) == failed_at + timedelta(seconds=PROBE_AFTER)
    [routing] = await events(world, message_id, "routing")
    assert routing["summary"].startswith("failover meta-main → twilio-main: 131042 ")
    assert routing["channel"] == "twilio-main"
    assert {k: routing["data"][k] for k in ("from", "to", "reason", "error_code")} == {
        "from": "meta-main",
        "to": "twilio-main",
        "reason": "failover",
        "error_code": "131042",
    }
    assert await metric(world, "leadline_channel_circuit_open", channel="meta-main") == 1
    assert await metric(world, "leadline_channel_circuit_open", channel="twilio-main") == 0
    assert await metric(world, "leadline_failovers_total", **{"from": "meta-main", "to": "twilio-main"}) == (
        failovers_before + 1
    )


@pytest.mark.parametrize(("outages", "opens"), [(2, False), (3, True)], ids=["two-5xx", "three-5xx"])
async def test_consecutive_5xx_open_the_circuit_at_the_threshold(world: World, outages: int, opens: bool) -> None:
    message_id = await world.send(template=TEMPLATE)
    await world.fault(provider="meta", mode="down", http_status=503, count=outages)

    for _ in range(outages + 1):
        await world.drain()
        world.clock.advance(120)  # past any backoff

    meta = await health_of(world, "meta-main")
    message = await world.message(message_id)
    assert len(await world.provider_requests("meta")) == outages + (0 if opens else 1)
    if opens:
        assert (meta["circuit"], meta["consecutive_failures"], meta["last_error_code"]) == ("open", 3, "http_503")
        assert (message["channel"], message["status"]) == ("twilio-main", "accepted")
        assert len(await world.provider_requests("twilio")) == 1
    else:
        assert (meta["circuit"], meta["consecutive_failures"]) == ("closed", 0)  # the success reset the count
        assert (message["channel"], message["status"]) == ("meta-main", "accepted")
        assert await world.provider_requests("twilio") == []


@pytest.mark.parametrize(
    ("provider", "fault"),
    [
        ("meta", {"mode": "throttle", "code": 130429}),
        ("meta", {"mode": "error", "code": 131056, "http_status": 400}),
        ("twilio", {"mode": "throttle", "code": 63018}),
        ("twilio", {"mode": "throttle", "code": 20429}),
    ],
    ids=["meta-130429", "meta-131056", "twilio-63018", "twilio-20429"],
)
async def test_rate_limits_never_open_the_circuit(world: World, provider: str, fault: dict[str, Any]) -> None:
    channel = f"{provider}-main"
    await world.inbound(provider, "Hola")
    message_id = await world.send(text="Tu pedido sale hoy")
    await world.fault(provider=provider, count=5, **fault)  # more than the threshold

    for _ in range(6):
        await world.drain()
        assert (await health_of(world, channel))["circuit"] == "closed"
        world.clock.advance(10)

    health = await health_of(world, channel)
    assert (health["circuit"], health["consecutive_failures"], health["opened_at"]) == ("closed", 0, None)
    message = await world.message(message_id)
    assert (message["channel"], message["status"]) == (channel, "accepted")
    assert len(await world.provider_requests(provider)) == 6


# --------------------------------------------------------------------------------------------
# While a circuit is open


async def test_while_meta_is_open_new_messages_route_to_twilio_with_reason_failover(world: World) -> None:
    first = await world.send(template=TEMPLATE)
    await meta_payment_problem(world)
    await world.drain()

    later = await world.send(to=OTHER_CUSTOMER, template=TEMPLATE)
    await world.drain()

    message = await world.message(later)
    assert (message["channel"], message["status"]) == ("twilio-main", "accepted")
    [out] = await events(world, later, "message_out")
    assert out["data"]["routing"]["reason"] == "failover"
    assert "meta-main: circuit open" in out["data"]["routing"]["passed_over"]
    assert await events(world, later, "routing") == []  # routed there at once: nothing had to move
    assert len(await world.provider_requests("meta")) == 1  # only the first message ever tried Meta
    assert (await world.message(first))["channel"] == "twilio-main"


async def test_messages_queued_for_meta_move_without_trying_meta_once_its_circuit_is_open(database_url: str) -> None:
    async with open_world(database_url, combine(failover_world(), with_worker(batch_size=1))) as world:
        await approve_order_update(world)
        queued = [await world.send(to=to, template=TEMPLATE) for to in (CUSTOMER, OTHER_CUSTOMER, "+5215500000001")]
        await meta_payment_problem(world)

        await world.drain()  # one job at a time: the later ones start after the first opened the circuit

        assert len(await world.provider_requests("meta")) == 1  # the first found Meta down; the others never tried
        assert len(await world.provider_requests("twilio")) == 3
        for message_id in queued:
            message = await world.message(message_id)
            assert (message["channel"], message["status"]) == ("twilio-main", "accepted")
            [routing] = await events(world, message_id, "routing")
            assert routing["data"]["error_code"] == "131042"


async def test_free_form_reply_moves_as_it_is_when_the_customers_window_is_open_on_twilio_too(world: World) -> None:
    await world.inbound("twilio", "Hola por Twilio")
    await world.inbound("meta", "Hola por Meta")
    message_id = await world.send(text="Claro, te ayudo", channel="meta-main")
    assert (await world.message(message_id))["channel"] == "meta-main"
    await meta_payment_problem(world)

    await world.drain()

    [sent] = await world.provider_requests("twilio")
    assert dict(sent_form(sent))["Body"] == "Claro, te ayudo"
    message = await world.message(message_id)
    assert (message["channel"], message["kind"], message["status"]) == ("twilio-main", "text", "accepted")


async def test_free_form_reply_in_a_meta_only_window_is_held_listed_and_released_when_the_probe_succeeds(
    world: World, tmp_path: Path
) -> None:
    await world.inbound("meta", "Hola")
    message_id = await world.send(text="Tu pedido sale hoy")
    await meta_payment_problem(world)

    await world.drain()

    message = await world.message(message_id)
    assert (message["channel"], message["status"]) == ("meta-main", "held")
    [listed] = await held(world)
    assert (listed["id"], listed["channel"], listed["to"], listed["error_code"]) == (
        message_id,
        "meta-main",
        CUSTOMER,
        "131042",
    )
    assert "window is open only on meta-main" in listed["reason"]
    [hold_event] = [e for e in await events(world, message_id, "status") if e["data"].get("status") == "held"]
    assert hold_event["summary"].startswith("held: ")
    assert (await health_of(world, "meta-main"))["held"] == 1
    assert await metric(world, "leadline_held_messages", channel="meta-main") == 1
    assert await world.provider_requests("twilio") == []
    cli = await asyncio.to_thread(run_cli, "held", "--config", str(config_file(world, tmp_path)))
    assert cli.exit_code == 0, cli.output
    assert "1 held message(s)" in cli.output and message_id in cli.output

    await world.control("DELETE", "/faults")
    await world.drain()
    assert (await world.message(message_id))["status"] == "held"  # not before the probe is due
    world.clock.advance(PROBE_AFTER + 1)
    await world.drain()

    message = await world.message(message_id)
    assert (message["channel"], message["status"], message["error"]) == ("meta-main", "accepted", None)
    assert await held(world) == []
    meta = await health_of(world, "meta-main")
    assert (meta["circuit"], meta["consecutive_failures"], meta["next_probe_at"]) == ("closed", 0, None)
    assert len(await world.provider_requests("meta")) == 2  # the failed attempt, then the probe that went out
    assert await world.provider_requests("twilio") == []
    statuses = [e["summary"] for e in await events(world, message_id, "status")]
    assert [s.split(":")[0] for s in statuses] == ["held", "released", "accepted"]


async def test_reply_sent_while_the_only_open_window_is_on_a_dead_channel_is_accepted_and_held(world: World) -> None:
    await world.inbound("meta", "Hola")
    first = await world.send(text="Un momento, por favor")
    await meta_payment_problem(world)
    await world.drain()  # the first reply opens Meta's circuit and is held

    second = await world.send(text="¿Sigues ahí?")  # accepted, not refused with needs_template
    await world.drain()

    message = await world.message(second)
    assert (message["channel"], message["status"]) == ("meta-main", "held")
    assert sorted(m["id"] for m in await held(world)) == sorted([first, second])
    assert await world.provider_requests("twilio") == []


async def test_a_failed_probe_reopens_the_circuit_with_a_new_next_probe_at(world: World) -> None:
    await world.inbound("meta", "Hola")
    message_id = await world.send(text="Tu pedido sale hoy")
    await meta_payment_problem(world)
    await world.drain()
    first_probe_at = datetime.fromisoformat((await health_of(world, "meta-main"))["next_probe_at"])

    probe_time = world.clock.advance(PROBE_AFTER + 1)
    await world.drain()

    meta = await health_of(world, "meta-main")
    assert meta["circuit"] == "open"
    assert datetime.fromisoformat(meta["next_probe_at"]) == probe_time + timedelta(seconds=PROBE_AFTER)
    assert datetime.fromisoformat(meta["next_probe_at"]) > first_probe_at
    assert (await world.message(message_id))["status"] == "held"  # held again, still listed
    assert [m["id"] for m in await held(world)] == [message_id]
    assert len(await world.provider_requests("meta")) == 2  # the first failure and the failed probe

    await world.control("DELETE", "/faults")
    world.clock.advance(PROBE_AFTER + 1)
    await world.drain()

    assert (await health_of(world, "meta-main"))["circuit"] == "closed"
    assert (await world.message(message_id))["status"] == "accepted"


async def test_released_by_hand_a_held_reply_moves_once_the_customer_writes_on_twilio(
    world: World, tmp_path: Path
) -> None:
    await world.inbound("meta", "Hola")
    message_id = await world.send(text="Tu pedido sale hoy")
    await meta_payment_problem(world)
    await world.drain()
    assert (await world.message(message_id))["status"] == "held"
    await world.inbound("twilio", "¿Me escriben por aquí?")

    cli = await asyncio.to_thread(run_cli, "held", "release", message_id, "--config", str(config_file(world, tmp_path)))
    assert cli.exit_code == 0, cli.output
    assert "released 1 message(s)" in cli.output
    await world.drain()

    message = await world.message(message_id)
    assert (message["channel"], message["kind"], message["status"]) == ("twilio-main", "text", "accepted")
    [sent] = await world.provider_requests("twilio")
    assert dict(sent_form(sent))["Body"] == "Tu pedido sale hoy"
    assert await held(world) == []


async def test_free_form_reply_in_a_meta_only_window_becomes_the_reengagement_template_in_template_mode(
    database_url: str,
) -> None:
    async with open_world(database_url, failover_world("template")) as world:
        await approve_order_update(world)
        await world.inbound("meta", "Hola")
        message_id = await world.send(text="Tu pedido sale hoy")
        await meta_payment_problem(world)

        await world.drain()

        message = await world.message(message_id)
        assert (message["channel"], message["kind"], message["status"]) == ("twilio-main", "template", "accepted")
        assert message["content"]["converted_from"] == {"type": "text", "text": "Tu pedido sale hoy"}
        [sent] = await world.provider_requests("twilio")
        assert "ContentSid" in dict(sent_form(sent))
        [routing] = await events(world, message_id, "routing")
        assert "converted to template order_update" in routing["summary"]
        assert routing["data"]["converted_to_template"] == "order_update"
        assert await held(world) == []


# --------------------------------------------------------------------------------------------
# State in the database


async def test_open_circuit_survives_a_restart_of_the_app(database_url: str, tmp_path: Path) -> None:
    async with open_world(database_url, failover_world()) as world:
        await approve_order_update(world)
        await world.send(template=TEMPLATE)
        await meta_payment_problem(world)
        await world.drain()
        opened = await health_of(world, "meta-main")
        assert opened["circuit"] == "open"

    async with open_world(database_url, failover_world()) as restarted:
        meta = await health_of(restarted, "meta-main")
        assert (meta["circuit"], meta["opened_at"], meta["next_probe_at"]) == (
            "open",
            opened["opened_at"],
            opened["next_probe_at"],
        )
        message_id = await restarted.send(to=OTHER_CUSTOMER, template=TEMPLATE)
        await restarted.drain()
        message = await restarted.message(message_id)
        assert (message["channel"], message["status"]) == ("twilio-main", "accepted")
        assert await restarted.provider_requests("meta") == []
        cli = await asyncio.to_thread(run_cli, "health", "--config", str(config_file(restarted, tmp_path)))
        assert cli.exit_code == 0, cli.output
        assert "meta-main" in cli.output and "open" in cli.output and "131042" in cli.output


async def test_concurrent_failures_open_the_circuit_once_and_lose_no_count(db: Database) -> None:
    config = RoutingConfig(failure_threshold=3, probe_after_seconds=30)
    now = datetime.fromisoformat("2026-01-01T12:00:00+00:00")

    async def fail(i: int) -> bool:
        async with db.transaction() as conn:
            outcome = await record_channel_failure(
                conn, "meta-main", kind=FailureKind.OUTAGE, code="http_503", message=f"#{i}", now=now, config=config
            )
        return outcome.opened

    opened = await asyncio.gather(*(fail(i) for i in range(12)))

    assert sum(opened) == 1
    async with db.read() as conn:
        circuit = await get_circuit(conn, "meta-main")
    assert circuit is not None
    assert (circuit.state, circuit.consecutive_failures, circuit.opened_at) == ("open", 12, now)


async def test_only_a_send_begun_after_the_latest_failure_closes_an_open_circuit(db: Database) -> None:
    config = RoutingConfig(failure_threshold=3, probe_after_seconds=30)
    failed_at = datetime.fromisoformat("2026-01-01T12:00:00+00:00")
    async with db.transaction() as conn:
        await record_channel_failure(
            conn, "meta-main", kind=FailureKind.ACCOUNT, code="131042", message="payment", now=failed_at, config=config
        )
        answered_at = failed_at + timedelta(seconds=1)
        unknown_start = await record_channel_success(conn, "meta-main", answered_at)
        in_flight = await record_channel_success(
            conn, "meta-main", answered_at, sent_since=failed_at - timedelta(seconds=1)
        )
        still_open = await get_circuit(conn, "meta-main")
        probe = await record_channel_success(conn, "meta-main", answered_at, sent_since=failed_at)
        closed = await get_circuit(conn, "meta-main")

    assert (unknown_start, in_flight, probe) == (False, False, True)
    assert still_open is not None and still_open.is_open
    assert closed is not None and (closed.state, closed.consecutive_failures, closed.next_probe_at) == (
        "closed",
        0,
        None,
    )
