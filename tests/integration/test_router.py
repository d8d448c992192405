"""Router rules through the real app: a webhook is answered, then a worker runs what the rules chose.

Handlers run from the job table, so a handler that fails is retried with backoff (on the worker's
clock, no sleeping) and, out of attempts, is listed as dead; the provider was answered 200 either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LUCIA, meta_fixture, only_lead, post_meta, post_twilio, timeline_of, twilio_fixture

from conftest import RunningApp, base_config, running_app
from leadline.config import config_from_mapping
from leadline.pipeline.worker import Worker
from leadline.store import jobs as job_store
from leadline.store.jobs import JobState

TOM = "+447700900123"

RULES: list[dict[str, Any]] = [
    {
        "name": "pricing",
        "when": {"keyword": ["precio", "price"]},
        "then": [{"handler": "tag", "args": {"tag": "pricing"}}],
    },
    {
        "name": "welcome",
        "when": {"lead": "new"},
        "then": [
            {"handler": "assign_owner", "args": {"owner": "ana@example.com"}},
            {"handler": "add_note", "args": {"text": "New lead: say hello within the hour"}},
        ],
    },
    {"name": "returning", "when": {"lead": "returning"}, "then": [{"handler": "tag", "args": {"tag": "returning"}}]},
    {"name": "photos", "when": {"kind": ["image", "video"]}, "then": [{"handler": "tag", "args": {"tag": "media"}}]},
    {"name": "via-twilio", "when": {"channel": "twilio-main"}, "then": [{"handler": "tag", "args": {"tag": "twilio"}}]},
    {
        "name": "order-number",
        "when": {"regex": r"\bpedido\s+#?\d{4,}\b"},
        "then": [{"handler": "add_note", "args": {"text": "Mentions an order number"}}],
    },
]


def text_from(sender: str, wamid: str, body: str, timestamp: int) -> bytes:
    payload = meta_fixture("text").replace(b"5215512345678", sender.lstrip("+").encode())
    payload = payload.replace(b"wamid.TXT0001", wamid.encode()).replace(b"1767225600", str(timestamp).encode())
    return payload.replace("Hola, ¿tienen envío gratis?".encode(), body.encode())


@pytest.fixture
async def routed(database_url: str, tmp_path: Path) -> AsyncIterator[RunningApp]:
    flaky = {
        "name": "crm-sync",
        "when": {"keyword": "sync"},
        "then": [{"handler": "router_handlers:needs_file", "args": {"path": str(tmp_path / "up"), "tag": "synced"}}],
    }
    config = base_config(database_url, router=[*RULES, flaky], worker={"max_attempts": 3, "backoff_max": 60})
    async with running_app(config_from_mapping(config)) as running:
        yield running


async def lead_after_jobs(app: RunningApp, client: httpx.AsyncClient, phone: str) -> dict[str, Any]:
    await app.drain_jobs()
    return await only_lead(client, app.url, phone)


async def test_keyword_rule_tags_the_lead(routed: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, routed.url, text_from(LUCIA, "wamid.R1", "¿Cuál es el PRECIO del envío?", 1767225600))
        await post_meta(client, routed.url, text_from(TOM, "wamid.R2", "Is it priced per kilo?", 1767225601))
        lucia = await lead_after_jobs(routed, client, LUCIA)
        tom = await only_lead(client, routed.url, TOM)
        timeline = await timeline_of(client, routed.url, lucia["id"])
    assert "pricing" in lucia["tags"]
    assert "pricing" not in tom["tags"]  # whole words only: "priced" is not "price"
    assert "tagged pricing" in [e["summary"] for e in timeline if e["kind"] == "tag"]


async def test_new_lead_gets_an_owner_and_a_note_once(routed: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, routed.url, text_from(LUCIA, "wamid.N1", "Hola", 1767225600))
        first = await lead_after_jobs(routed, client, LUCIA)
        assert first["owner"] == "ana@example.com"
        assert "returning" not in first["tags"]

        await post_meta(client, routed.url, text_from(LUCIA, "wamid.N2", "¿Siguen ahí?", 1767225700))
        again = await lead_after_jobs(routed, client, LUCIA)
        timeline = await timeline_of(client, routed.url, again["id"])
    assert [e["summary"] for e in timeline if e["kind"] == "owner"] == ["assigned to ana@example.com"]
    assert [e["summary"] for e in timeline if e["kind"] == "note"] == ["New lead: say hello within the hour"]
    assert "returning" in again["tags"]


async def test_owner_is_not_reassigned_when_a_known_lead_writes_on_another_channel(routed: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, routed.url, meta_fixture("text"))
        await routed.drain_jobs()
        await post_twilio(client, routed.url, twilio_fixture("inbound_text"))
        lead = await lead_after_jobs(routed, client, LUCIA)
        timeline = await timeline_of(client, routed.url, lead["id"])
    assert len([e for e in timeline if e["kind"] == "owner"]) == 1
    assert {"twilio", "returning"} <= set(lead["tags"])


async def test_kind_and_channel_rules_match_only_their_messages(routed: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, routed.url, meta_fixture("image"))
        lucia = await lead_after_jobs(routed, client, LUCIA)
        assert "media" in lucia["tags"]
        assert "twilio" not in lucia["tags"]
        await post_twilio(client, routed.url, twilio_fixture("inbound_location"))
        lucia = await lead_after_jobs(routed, client, LUCIA)
    assert "twilio" in lucia["tags"]
    assert lucia["tags"].count("media") == 1


async def test_regex_rule_adds_a_note(routed: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, routed.url, text_from(LUCIA, "wamid.X1", "Mi Pedido #88123 no llegó", 1767225600))
        await post_meta(client, routed.url, text_from(TOM, "wamid.X2", "pedido 12", 1767225601))
        lucia = await lead_after_jobs(routed, client, LUCIA)
        tom = await only_lead(client, routed.url, TOM)
        lucia_notes = [e["summary"] for e in await timeline_of(client, routed.url, lucia["id"]) if e["kind"] == "note"]
        tom_notes = [e["summary"] for e in await timeline_of(client, routed.url, tom["id"]) if e["kind"] == "note"]
    assert "Mentions an order number" in lucia_notes
    assert "Mentions an order number" not in tom_notes


def worker_at(app: RunningApp, when: datetime) -> Worker:
    services = app.services
    return Worker(services.db, services.job_handlers, services.config.settings.worker, clock=lambda: when)


async def jobs_in(app: RunningApp, state: JobState) -> list[dict[str, Any]]:
    async with app.services.db.read() as conn:
        return [j for j in await job_store.list_jobs(conn, state=state) if j["payload"].get("rule") == "crm-sync"]


async def test_failing_handler_is_retried_later_and_the_webhook_was_still_answered(
    routed: RunningApp, tmp_path: Path
) -> None:
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, routed.url, text_from(LUCIA, "wamid.F1", "please sync me", 1767225600))
        assert response.status_code == 200

        await routed.drain_jobs()
        [waiting] = await jobs_in(routed, JobState.PENDING)
        assert waiting["attempts"] == 1
        assert "DependencyDown" in waiting["last_error"]
        assert waiting["run_after"] > datetime.now(UTC)
        assert await routed.drain_jobs() == 0  # backing off: not due yet

        (tmp_path / "up").touch()
        await worker_at(routed, datetime.now(UTC) + timedelta(hours=1)).run_until_idle()
        lead = await only_lead(client, routed.url, LUCIA)
    assert "synced" in lead["tags"]
    [done] = await jobs_in(routed, JobState.DONE)
    assert done["attempts"] == 2


async def test_handler_that_keeps_failing_ends_dead_and_listed(routed: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, routed.url, text_from(LUCIA, "wamid.F2", "sync please", 1767225600))
        assert response.status_code == 200
        await routed.drain_jobs()
        later = await post_meta(client, routed.url, text_from(LUCIA, "wamid.F3", "¿y el precio?", 1767225700))
        assert later.status_code == 200
        now = datetime.now(UTC)
        for day in (1, 2):
            await worker_at(routed, now + timedelta(days=day)).run_until_idle()

        [dead] = await jobs_in(routed, JobState.DEAD)
        assert dead["attempts"] == 3
        assert "gave up after 3 attempts" in dead["last_error"]
        assert await jobs_in(routed, JobState.PENDING) == []
        # The lead's later jobs, which wait for earlier ones to finish, ran once this one was buried.
        lead = await only_lead(client, routed.url, LUCIA)
    assert "pricing" in lead["tags"]
    assert "synced" not in lead["tags"]
