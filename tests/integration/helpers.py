"""What the HTTP-level tests share: sending signed webhooks, reading /v1, counting rows, metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from conftest import API_KEY, META_APP_SECRET, PUBLIC_URL, TWILIO_AUTH_TOKEN
from leadline.providers.meta.signature import meta_signature
from leadline.providers.twilio.signature import twilio_signature
from leadline.store.db import Database
from leadline.store.outbound import record_outbound_message
from leadline.store.tables import jobs, leads, messages, provider_notices, timeline_events

FIXTURES = Path(__file__).parents[1] / "fixtures"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TWILIO_PUBLIC_WEBHOOK = PUBLIC_URL + "/webhooks/twilio"
FORM = "application/x-www-form-urlencoded"

LUCIA = "+5215512345678"
"""The customer of most fixtures, as WhatsApp spells her Mexican mobile."""


def meta_fixture(name: str) -> bytes:
    """A Meta fixture's bytes, exactly as stored (the signature covers the raw body)."""
    return (FIXTURES / "meta" / f"{name}.json").read_bytes()


def meta_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def twilio_fixture(name: str) -> dict[str, str]:
    params: dict[str, str] = json.loads((FIXTURES / "twilio" / f"{name}.json").read_text(encoding="utf-8"))
    return params


def meta_headers(body: bytes, *, secret: str = META_APP_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": meta_signature(secret, body)}


def twilio_headers(params: dict[str, str], *, url: str = TWILIO_PUBLIC_WEBHOOK) -> dict[str, str]:
    return {"Content-Type": FORM, "X-Twilio-Signature": twilio_signature(TWILIO_AUTH_TOKEN, url, params)}


async def post_meta(client: httpx.AsyncClient, base_url: str, body: bytes) -> httpx.Response:
    return await client.post(f"{base_url}/webhooks/meta", content=body, headers=meta_headers(body))


async def post_twilio(
    client: httpx.AsyncClient, base_url: str, params: dict[str, str], *, signed_for: str = TWILIO_PUBLIC_WEBHOOK
) -> httpx.Response:
    return await client.post(
        f"{base_url}/webhooks/twilio", content=urlencode(params), headers=twilio_headers(params, url=signed_for)
    )


async def v1(client: httpx.AsyncClient, base_url: str, path: str, **params: Any) -> Any:
    """GET a /v1 path as the CRM would, asserting it succeeded."""
    response = await client.get(f"{base_url}/v1{path}", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


async def leads_for(client: httpx.AsyncClient, base_url: str, phone: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await v1(client, base_url, "/leads", phone=phone))["leads"]
    return found


async def only_lead(client: httpx.AsyncClient, base_url: str, phone: str) -> dict[str, Any]:
    found = await leads_for(client, base_url, phone)
    assert len(found) == 1, f"expected one lead for {phone}, found {found}"
    return found[0]


async def timeline_of(client: httpx.AsyncClient, base_url: str, lead_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await v1(client, base_url, f"/leads/{lead_id}/timeline", limit=200))["events"]
    return events


async def message(client: httpx.AsyncClient, base_url: str, message_id: str) -> dict[str, Any]:
    found: dict[str, Any] = await v1(client, base_url, f"/messages/{message_id}")
    return found


async def row_counts(db: Database) -> dict[str, int]:
    """Rows in the tables a webhook writes to."""
    counts = {}
    async with db.read() as conn:
        for table in (leads, messages, timeline_events, jobs, provider_notices):
            counts[table.name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    return counts


async def record_sent_message(
    db: Database, *, lead_id: str, channel: str, provider: str, provider_message_id: str, text: str = "Hola"
) -> str:
    """A message leadline sent (as the outbound path will record it); returns its leadline id."""
    async with db.transaction() as conn:
        return await record_outbound_message(
            conn,
            lead_id=lead_id,
            channel=channel,
            provider=provider,
            provider_message_id=provider_message_id,
            kind="text",
            text=text,
            now=datetime.now(UTC),
        )


async def scrape(client: httpx.AsyncClient, base_url: str, name: str, **labels: str) -> float:
    """A sample from the app's /metrics page (0 when it has never been counted)."""
    response = await client.get(f"{base_url}/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def assert_contains(actual: Any, expected: Any, path: str = "content") -> None:
    """``expected`` is a subset of ``actual`` (dicts by key, lists item by item)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} is missing from {actual!r}"
            assert_contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_contains(a, e, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
