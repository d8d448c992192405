"""CRM callbacks: every timeline event, POSTed as signed JSON to each subscriber, at least once, in order
per lead (the job table's ``order_key``), retried with backoff like any job.

Signature (documented in docs/callbacks.md): ``X-Leadline-Signature: t=<unix seconds>,v1=<hex>`` where
``<hex>`` is HMAC-SHA256, keyed with the subscriber's secret, of ``"<t>." + raw body``. A CRM recomputes it,
compares in constant time, and rejects timestamps older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import LeadlineConfig
from leadline.pipeline.worker import JobRun, RetryLater
from leadline.store.db import Database, insert_ignoring_duplicates
from leadline.store.jobs import Job
from leadline.store.tables import crm_subscribers, leads, messages, timeline_events

SIGNATURE_HEADER = "X-Leadline-Signature"


def sign_callback(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_callback(secret: str, header: str, body: bytes, *, now: int, tolerance_seconds: int = 300) -> bool:
    """What a CRM does with a callback; leadline's tests use it too."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        expected = sign_callback(secret, timestamp, body)
    except (KeyError, ValueError):
        return False
    return abs(now - timestamp) <= tolerance_seconds and hmac.compare_digest(expected, header)


async def sync_subscribers(conn: AsyncConnection, config: LeadlineConfig, now: datetime) -> None:
    """Make the database's list of subscribers match the configuration (the job producers read it)."""
    await conn.execute(delete(crm_subscribers))
    await insert_ignoring_duplicates(
        conn,
        crm_subscribers,
        [{"name": s.name, "all_events": s.all_events, "created_at": now} for s in config.settings.subscribers],
        conflict_columns=["name"],
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


async def callback_body(conn: AsyncConnection, event_key: str) -> bytes | None:
    event = (await conn.execute(select(timeline_events).where(timeline_events.c.dedupe_key == event_key))).first()
    if event is None:
        return None
    lead = (await conn.execute(select(leads).where(leads.c.id == event.lead_id))).first()
    message = None
    if event.message_id is not None:
        row = (await conn.execute(select(messages).where(messages.c.id == event.message_id))).first()
        if row is not None:
            message = {
                "id": row.id,
                "direction": row.direction,
                "channel": row.channel,
                "provider": row.provider,
                "provider_message_id": row.provider_message_id,
                "kind": row.kind,
                "text": row.text,
                "status": row.status,
                "error": None if row.error_code is None else {"code": row.error_code, "title": row.error_title},
            }
    payload = {
        "id": event_key,
        "type": event.kind,
        "occurred_at": event.occurred_at,
        "summary": event.summary,
        "channel": event.channel,
        "data": event.data,
        "lead": None
        if lead is None
        else {"id": lead.id, "phone": lead.phone, "display_name": lead.display_name, "tags": lead.tags},
        "message": message,
    }
    return json.dumps(payload, default=_json_default, ensure_ascii=False).encode()


class CallbackJobs:
    def __init__(self, config: LeadlineConfig, db: Database):
        self.config = config
        self.db = db
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, job: Job, run: JobRun) -> None:
        subscriber = next((s for s in self.config.settings.subscribers if s.name == job.payload["subscriber"]), None)
        if subscriber is None:
            return  # removed from the configuration: nobody to deliver to
        async with self.db.read() as conn:
            body = await callback_body(conn, job.payload["event_key"])
        if body is None:
            return
        timestamp = int(datetime.now(UTC).timestamp())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_callback(subscriber.secret.get_secret_value(), timestamp, body),
            "X-Leadline-Event-Id": job.payload["event_key"],
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                subscriber.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=subscriber.timeout_seconds),
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryLater(f"subscriber {subscriber.name} unreachable: {type(exc).__name__}") from exc
        if not 200 <= status < 300:
            raise RetryLater(f"subscriber {subscriber.name} answered {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
