"""Channel health as the send path sees it: the routing policy's circuit breaker reads this table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import channel_health


async def _ensure_row(conn: AsyncConnection, channel: str, now: datetime) -> None:
    await insert_ignoring_duplicates(
        conn,
        channel_health,
        [{"channel": channel, "state": "healthy", "consecutive_failures": 0, "updated_at": now}],
        conflict_columns=["channel"],
    )


async def record_channel_success(conn: AsyncConnection, channel: str, now: datetime) -> None:
    await _ensure_row(conn, channel, now)
    await conn.execute(
        update(channel_health)
        .where(channel_health.c.channel == channel)
        .values(consecutive_failures=0, last_success_at=now, updated_at=now)
    )


async def record_channel_failure(conn: AsyncConnection, channel: str, code: str, message: str, now: datetime) -> None:
    """A channel-level failure (payment, account locked, token expired, sustained 5xx or timeouts)."""
    await _ensure_row(conn, channel, now)
    await conn.execute(
        update(channel_health)
        .where(channel_health.c.channel == channel)
        .values(
            consecutive_failures=channel_health.c.consecutive_failures + 1,
            last_error_code=code,
            last_error_message=message[:500],
            last_failure_at=now,
            updated_at=now,
        )
    )


async def channel_health_rows(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await conn.execute(select(channel_health).order_by(channel_health.c.channel))]
