"""Reads behind the REST API, the CLI and the console: one place, so they never disagree."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.domain.phones import InvalidPhoneNumber, match_key, to_e164
from leadline.store.tables import (
    api_keys,
    lead_identities,
    leads,
    media_files,
    message_statuses,
    messages,
    timeline_events,
)


def _lead_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "phone": row.phone,
        "display_name": row.display_name,
        "owner": row.owner,
        "tags": list(row.tags or []),
        "created_at": row.created_at,
        "last_inbound_at": row.last_inbound_at,
        "last_inbound_channel": row.last_inbound_channel,
    }


async def find_leads_by_phone(conn: AsyncConnection, phone: str) -> list[dict[str, Any]]:
    """Leads known under any spelling of ``phone``. Raises InvalidPhoneNumber for text that is no number."""
    key = match_key(to_e164(phone))
    rows = await conn.execute(
        select(leads)
        .join(lead_identities, lead_identities.c.lead_id == leads.c.id)
        .where(lead_identities.c.kind == "phone", lead_identities.c.value == key)
    )
    return [_lead_dict(r) for r in rows]


async def list_leads(conn: AsyncConnection, *, limit: int = 50) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(leads).order_by(func.coalesce(leads.c.last_inbound_at, leads.c.created_at).desc()).limit(limit)
    )
    return [_lead_dict(r) for r in rows]


async def get_lead(conn: AsyncConnection, lead_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(leads).where(leads.c.id == lead_id))).first()
    return None if row is None else _lead_dict(row)


async def lead_for_phone(conn: AsyncConnection, phone: str) -> dict[str, Any] | None:
    try:
        found = await find_leads_by_phone(conn, phone)
    except InvalidPhoneNumber:
        return None
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class TimelinePage:
    events: list[dict[str, Any]]
    next_cursor: str | None


class InvalidCursor(ValueError):
    pass


def _encode_cursor(event_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([event_id]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        (event_id,) = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(event_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor("the cursor is not one this API gave out") from exc


async def timeline(conn: AsyncConnection, lead_id: str, *, limit: int = 50, cursor: str | None = None) -> TimelinePage:
    """A lead's timeline, newest first in the order leadline recorded it.

    Recording order, not the providers' timestamps: those have one-second resolution and come from two
    clocks, and a status must never show above the message it is about.
    """
    query = (
        select(timeline_events)
        .where(timeline_events.c.lead_id == lead_id)
        .order_by(timeline_events.c.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(timeline_events.c.id < _decode_cursor(cursor))
    rows = list(await conn.execute(query))
    page = rows[:limit]
    events = [
        {
            "id": r.id,
            "kind": r.kind,
            "message_id": r.message_id,
            "channel": r.channel,
            "summary": r.summary,
            "data": r.data,
            "occurred_at": r.occurred_at,
        }
        for r in page
    ]
    next_cursor = _encode_cursor(page[-1].id) if len(rows) > limit else None
    return TimelinePage(events, next_cursor)


async def get_message(conn: AsyncConnection, message_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
    if row is None:
        return None
    history = []
    if row.provider_message_id is not None:
        statuses = await conn.execute(
            select(message_statuses)
            .where(
                message_statuses.c.provider == row.provider,
                message_statuses.c.provider_message_id == row.provider_message_id,
            )
            .order_by(message_statuses.c.occurred_at, message_statuses.c.rank)
        )
        history = [
            {
                "status": s.status,
                "occurred_at": s.occurred_at,
                "error": None
                if s.error_code is None
                else {"code": s.error_code, "title": s.error_title, "detail": s.error_detail},
            }
            for s in statuses
        ]
    return {
        "id": row.id,
        "lead_id": row.lead_id,
        "direction": row.direction,
        "channel": row.channel,
        "provider": row.provider,
        "provider_message_id": row.provider_message_id,
        "kind": row.kind,
        "text": row.text,
        "content": row.content,
        "status": row.status,
        "error": None if row.error_code is None else {"code": row.error_code, "title": row.error_title},
        "occurred_at": row.occurred_at,
        "created_at": row.created_at,
        "status_history": history,
        "media": await _media_of(conn, row.id),
    }


async def _media_of(conn: AsyncConnection, message_id: str) -> list[dict[str, Any]]:
    """A message's media items in order; the bytes of a ``stored`` one are at ``/v1/media/{id}``."""
    rows = await conn.execute(
        select(
            media_files.c.id,
            media_files.c.state,
            media_files.c.mime_type,
            media_files.c.filename,
            media_files.c.size,
            media_files.c.error,
        )
        .where(media_files.c.message_id == message_id)
        .order_by(media_files.c.position)
    )
    return [dict(r._mapping) for r in rows]


async def api_key_is_valid(conn: AsyncConnection, key_sha256: str) -> bool:
    row = await conn.execute(
        select(api_keys.c.id).where(api_keys.c.key_sha256 == key_sha256, api_keys.c.revoked_at.is_(None))
    )
    return row.first() is not None
