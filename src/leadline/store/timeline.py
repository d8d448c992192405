"""Writing to a lead's timeline: the one way in, so every new event also reaches the CRM subscribers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.store import jobs as job_store
from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import crm_subscribers, timeline_events

CALLBACK_JOB = "crm_callback"
_ALL_EVENT_SUBSCRIBERS = select(crm_subscribers.c.name).where(crm_subscribers.c.all_events)


async def record_timeline(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    *,
    now: datetime,
    subscribers: Sequence[str] | None = None,
) -> set[str]:
    """Add events (each unique by ``dedupe_key``); returns the keys that were new.

    Each new event is queued for every CRM subscriber in the same transaction, ordered per subscriber and
    lead, so callbacks are at least once and in order without a separate scan of the timeline.
    ``subscribers``: as :func:`callback_subscribers` read them earlier in this transaction, if it did.
    """
    new_keys = set(
        await insert_ignoring_duplicates(
            conn, timeline_events, rows, conflict_columns=["dedupe_key"], returning="dedupe_key"
        )
    )
    if not new_keys:
        return new_keys
    if subscribers is None:
        subscribers = await callback_subscribers(conn)
    if subscribers:
        await job_store.enqueue(
            conn,
            [
                callback_job(name, row["lead_id"], row["dedupe_key"], now)
                for row in rows
                if row["dedupe_key"] in new_keys
                for name in subscribers
            ],
        )
    return new_keys


async def callback_subscribers(conn: AsyncConnection) -> list[str]:
    """The CRM subscribers that receive every timeline event."""
    return list((await conn.execute(_ALL_EVENT_SUBSCRIBERS)).scalars())


def callback_job(subscriber: str, lead_id: str, event_key: str, now: datetime) -> dict[str, Any]:
    return job_store.new_job(
        CALLBACK_JOB,
        {"subscriber": subscriber, "event_key": event_key},
        now=now,
        order_key=f"cb:{subscriber}:{lead_id}",
        dedupe_key=f"cb:{subscriber}:{event_key}",
    )
