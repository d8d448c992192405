"""Provider errors on the send path, over real HTTP against the sandbox's faults, on SQLite and PostgreSQL.

Each error class ends one way: retried after the provider's hint (or backoff), failed with the
provider's code and text on the timeline, or counted against the channel's health. Retries are
bounded; what runs out of attempts is a dead letter that ``leadline outbox`` lists and re-drives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from outbound_world import World, open_world, with_worker
from sqlalchemy import select
from typer.testing import CliRunner

from leadline.cli import app as cli_app
from leadline.routing.health import channel_health_rows
from leadline.store.tables import jobs


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url, with_worker(max_attempts=3, backoff_base=2.0, backoff_max=60.0)) as opened:
        yield opened


async def send_one(world: World, provider: str) -> str:
    await world.inbound(provider, "Hola")
    return await world.send(text="Tu pedido sale hoy")


async def send_job(world: World) -> dict[str, Any]:
    [job] = await world.job_rows("send_message")
    return job


async def failed_events(world: World, message_id: str) -> list[dict[str, Any]]:
    lead_id = (await world.message(message_id))["lead_id"]
    return [e for e in await world.timeline(lead_id) if e["data"].get("status") == "failed"]


# --------------------------------------------------------------------------------------------
# Retry later: the provider's hint decides when


@pytest.mark.parametrize(
    ("provider", "fault", "wait"),
    [
        ("meta", {"mode": "throttle", "code": 130429}, 1.0),
        ("meta", {"mode": "error", "code": 131056, "http_status": 400}, 6.0),
        ("meta", {"mode": "throttle", "code": 130429, "retry_after": 7}, 7.0),
        ("twilio", {"mode": "throttle", "code": 63018}, 1.0),
        ("twilio", {"mode": "throttle", "code": 20429}, 1.0),
        ("twilio", {"mode": "throttle", "code": 20429, "retry_after": 12}, 12.0),
        ("meta", {"mode": "down", "http_status": 503}, None),
    ],
    ids=["meta-130429", "meta-131056", "meta-retry-after", "twilio-63018", "twilio-20429", "twilio-retry-after", "5xx"],
)
async def test_rate_limited_send_is_retried_after_the_providers_hint_then_accepted(
    world: World, provider: str, fault: dict[str, Any], wait: float | None
) -> None:
    message_id = await send_one(world, provider)
    await world.fault(provider=provider, count=1, **fault)

    await world.drain()
    tried_at = world.clock.now()  # the clock stood still while the worker ran

    job = await send_job(world)
    assert (job["state"], job["attempts"]) == ("pending", 1)
    if wait is not None:
        assert job["run_after"] == tried_at + timedelta(seconds=wait)
    else:  # no hint: exponential backoff with jitter, between half and all of backoff_base
        assert tried_at + timedelta(seconds=1) <= job["run_after"] <= tried_at + timedelta(seconds=2)
    assert (await world.message(message_id))["status"] == "queued"

    world.clock.advance(wait - 0.5 if wait is not None else 0.9)
    assert await world.drain() == 0  # not before the hint (or the least backoff)
    world.clock.advance(1.5)
    await world.drain()

    assert (await world.message(message_id))["status"] == "accepted"
    assert len(await world.provider_requests(provider)) == 2
    assert (await send_job(world))["state"] == "done"


# --------------------------------------------------------------------------------------------
# Failing for good: one terminal state, the provider's code and text on the timeline


@pytest.mark.parametrize(
    ("provider", "code", "error_class"),
    [
        ("meta", 131047, "needs_template"),
        ("twilio", 63016, "needs_template"),
        ("meta", 131026, "recipient_unreachable"),
        ("twilio", 63024, "recipient_unreachable"),
        ("meta", 100, "bad_request"),
        ("twilio", 63027, "bad_request"),
    ],
)
async def test_send_refused_for_good_fails_once_with_the_providers_code_and_text(
    world: World, provider: str, code: int, error_class: str
) -> None:
    message_id = await send_one(world, provider)
    await world.fault(provider=provider, mode="error", code=code, http_status=400, count=1)

    await world.drain()
    world.clock.advance(3600)
    await world.drain()

    message = await world.message(message_id)
    assert message["status"] == "failed"
    assert message["error"]["code"] == str(code)
    assert message["error"]["title"]
    [event] = await failed_events(world, message_id)
    assert event["summary"].startswith(f"failed: {code} ")
    assert event["data"] == {"status": "failed", "error_code": str(code)}
    assert len(await world.provider_requests(provider)) == 1  # never retried
    job = await send_job(world)
    assert (job["state"], job["attempts"]) == ("done", 1)  # finished, not a dead letter: nothing to re-drive


@pytest.mark.parametrize(("provider", "code"), [("meta", 131031), ("twilio", 63112), ("meta", 190)])
async def test_channel_failure_is_recorded_on_the_channels_health_and_retried(
    world: World, provider: str, code: int
) -> None:
    message_id = await send_one(world, provider)
    await world.fault(provider=provider, mode="error", code=code, http_status=403, count=2)
    channel = f"{provider}-main"

    await world.drain()
    world.clock.advance(60)
    await world.drain()
    async with world.services.db.read() as conn:
        [after_failures] = [r for r in await channel_health_rows(conn) if r["channel"] == channel]
    world.clock.advance(60)
    await world.drain()
    async with world.services.db.read() as conn:
        [after_success] = [r for r in await channel_health_rows(conn) if r["channel"] == channel]

    assert (after_failures["consecutive_failures"], after_failures["last_error_code"]) == (2, str(code))
    assert after_failures["last_error_message"]
    assert after_success["consecutive_failures"] == 0
    assert after_success["last_success_at"] is not None
    assert (await world.message(message_id))["status"] == "accepted"


# --------------------------------------------------------------------------------------------
# Bounded retries, dead letters, and re-driving them


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), catch_exceptions=False)


async def test_send_that_keeps_failing_ends_as_a_dead_letter_that_outbox_retry_redrives(
    world: World, tmp_path: Path
) -> None:
    message_id = await send_one(world, "meta")
    await world.fault(provider="meta", mode="throttle", code=130429)  # until cleared

    for _ in range(5):  # more rounds than attempts: the bound, not the test, stops it
        await world.drain()
        world.clock.advance(120)

    job = await send_job(world)
    assert (job["state"], job["attempts"]) == ("dead", 3)
    assert "130429" in job["last_error"]
    message = await world.message(message_id)
    assert (message["status"], message["error"]["code"]) == ("failed", "130429")
    assert len(await failed_events(world, message_id)) == 1
    assert len(await world.provider_requests("meta")) == 3

    config_file = tmp_path / "leadline.toml"
    config_file.write_text(f'database_url = "{world.config.settings.database_url}"\n')
    listed = await asyncio.to_thread(run_cli, "outbox", "list", "--config", str(config_file))
    assert listed.exit_code == 0, listed.output
    assert "send_message" in listed.output and "dead: 1" in listed.output

    await world.control("DELETE", "/faults")
    retried = await asyncio.to_thread(run_cli, "outbox", "retry", str(job["id"]), "--config", str(config_file))
    assert retried.exit_code == 0, retried.output
    assert "re-queued 1 job(s)" in retried.output
    assert (await world.message(message_id))["status"] == "queued"
    assert (await world.message_row(message_id))["error_title"] is None  # the old failure is gone with its code
    await world.drain()

    message = await world.message(message_id)
    assert (message["status"], message["error"]) == ("accepted", None)
    assert (await send_job(world))["state"] == "done"
    assert len(await world.provider_requests("meta")) == 4


async def test_outbox_list_shows_nothing_dead_after_a_clean_run(world: World, tmp_path: Path) -> None:
    await send_one(world, "twilio")
    await world.drain()
    config_file = tmp_path / "leadline.toml"
    config_file.write_text(f'database_url = "{world.config.settings.database_url}"\n')

    listed = await asyncio.to_thread(run_cli, "outbox", "list", "--config", str(config_file))

    assert listed.exit_code == 0, listed.output
    assert "dead" not in listed.output
    async with world.services.db.read() as conn:
        states = set((await conn.execute(select(jobs.c.state))).scalars())
    assert states == {"done"}
