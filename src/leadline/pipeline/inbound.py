"""``handle_inbound``: record what a webhook brought, exactly once, in the caller's transaction.

For each message: upsert the lead from the contact's number, record the message on the lead's timeline,
open the customer-service window, and dispatch it through the router (as durable jobs). For each status:
keep the report, and move the message's status forward if it is known (a report for a message not yet
known is kept and applied when the message appears). Every "exactly once" here is a unique constraint in
the database, so it also holds when several processes receive the same webhook at the same moment.

The work is batched (a handful of statements per batch, not per event) because the webhook endpoint
commits many concurrent requests in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import RouterRule
from leadline.domain.ids import new_id
from leadline.domain.messages import DeliveryStatus, InboundEvent, InboundMessage, ProviderNotice, StatusUpdate
from leadline.domain.timeline import TimelineKind, message_content, summarize
from leadline.media.records import record_inbound_media
from leadline.pipeline.leads import Contact, identities_of, upsert_contacts
from leadline.pipeline.router import select_handlers
from leadline.store import jobs as job_store
from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import (
    conversation_windows,
    leads,
    message_statuses,
    messages,
    provider_notices,
)
from leadline.store.timeline import record_timeline

HANDLER_JOB = "run_handler"
NOTICE_JOB = "provider_notice"


@dataclass(slots=True)
class InboundOutcome:
    new_messages: int = 0
    duplicate_messages: int = 0
    new_leads: int = 0
    statuses_recorded: int = 0
    statuses_applied: int = 0
    notices_recorded: int = 0
    lead_ids: dict[str, str] = field(default_factory=dict)
    """Lead id per provider message id of every message in the batch (new or duplicate)."""


async def handle_inbound(
    conn: AsyncConnection,
    events: Sequence[InboundEvent],
    *,
    rules: Sequence[RouterRule] = (),
    now: datetime | None = None,
) -> InboundOutcome:
    now = now or datetime.now(UTC)
    outcome = InboundOutcome()
    # Sorted, so that two processes storing overlapping batches take row locks in the same order.
    inbound = sorted(
        _unique_messages([e for e in events if isinstance(e, InboundMessage)]),
        key=lambda m: (m.provider, m.provider_message_id),
    )
    statuses = [e for e in events if isinstance(e, StatusUpdate)]
    notices = [e for e in events if isinstance(e, ProviderNotice)]
    if inbound:
        await _record_messages(conn, inbound, rules, now, outcome)
    if statuses:
        await record_statuses(conn, statuses, now, outcome)
    if notices:
        await _record_notices(conn, notices, now, outcome)
    return outcome


async def _record_notices(
    conn: AsyncConnection, notices: list[ProviderNotice], now: datetime, outcome: InboundOutcome
) -> None:
    """Keep each notice once and hand it to its topic's handler through the job table."""
    new_keys = set(
        await insert_ignoring_duplicates(
            conn,
            provider_notices,
            [
                {
                    "provider": n.provider,
                    "channel": n.channel,
                    "topic": n.topic,
                    "account_id": n.account_id,
                    "payload": n.payload,
                    "occurred_at": n.timestamp,
                    "received_at": now,
                    "dedupe_key": n.dedupe_key,
                }
                for n in notices
            ],
            conflict_columns=["dedupe_key"],
            returning="dedupe_key",
        )
    )
    outcome.notices_recorded = len(new_keys)
    await job_store.enqueue(
        conn,
        [
            job_store.new_job(
                NOTICE_JOB,
                {"dedupe_key": n.dedupe_key, "topic": n.topic},
                now=now,
                dedupe_key=f"notice:{n.dedupe_key}",
            )
            for n in notices
            if n.dedupe_key in new_keys
        ],
    )


def _unique_messages(items: list[InboundMessage]) -> list[InboundMessage]:
    seen: dict[tuple[str, str], InboundMessage] = {}
    for message in items:
        seen.setdefault((message.provider, message.provider_message_id), message)
    return list(seen.values())


async def _record_messages(
    conn: AsyncConnection,
    inbound: list[InboundMessage],
    rules: Sequence[RouterRule],
    now: datetime,
    outcome: InboundOutcome,
) -> None:
    lead_by_message, created_leads = await upsert_contacts(
        conn,
        [
            Contact(
                m.provider_message_id,
                identities_of(m.provider, m.sender, m.sender_provider_id),
                m.sender,
                m.profile_name,
            )
            for m in inbound
        ],
        now,
    )
    outcome.lead_ids = dict(lead_by_message)
    outcome.new_leads = len(created_leads)

    rows = [
        {
            "id": new_id("msg"),
            "lead_id": lead_by_message[m.provider_message_id],
            "direction": "in",
            "channel": m.channel,
            "provider": m.provider,
            "provider_message_id": m.provider_message_id,
            "kind": m.kind.value,
            "text": m.text,
            "content": message_content(m),
            "raw": m.raw,
            "status": None,
            "status_rank": 0,
            "occurred_at": m.timestamp,
            "created_at": now,
        }
        for m in inbound
    ]
    inserted = set(
        await insert_ignoring_duplicates(
            conn, messages, rows, conflict_columns=["provider", "provider_message_id"], returning="provider_message_id"
        )
    )
    outcome.new_messages = len(inserted)
    outcome.duplicate_messages = len(inbound) - len(inserted)
    if not inserted:
        return

    fresh = [(m, row) for m, row in zip(inbound, rows, strict=True) if m.provider_message_id in inserted]
    await record_timeline(
        conn,
        [
            {
                "lead_id": row["lead_id"],
                "kind": TimelineKind.MESSAGE_IN.value,
                "message_id": row["id"],
                "channel": m.channel,
                "summary": summarize(m),
                "data": {"kind": m.kind.value, "provider": m.provider, "provider_message_id": m.provider_message_id},
                "occurred_at": m.timestamp,
                "dedupe_key": f"in:{m.provider}:{m.provider_message_id}",
            }
            for m, row in fresh
        ],
        now=now,
    )
    await _open_windows(conn, fresh)
    await _update_lead_contact(conn, fresh)

    handler_jobs = []
    first_message_of_new_lead: set[str] = set()
    for m, row in fresh:
        lead_id = str(row["lead_id"])
        is_new = lead_id in created_leads and lead_id not in first_message_of_new_lead
        if is_new:
            first_message_of_new_lead.add(lead_id)
        for selected in select_handlers(rules, m, is_new):
            handler_jobs.append(
                job_store.new_job(
                    HANDLER_JOB,
                    {
                        "message_id": row["id"],
                        "lead_id": lead_id,
                        "rule": selected.rule,
                        "handler": selected.call.handler,
                        "args": selected.call.args,
                    },
                    now=now,
                    order_key=f"lead:{lead_id}",
                    dedupe_key=f"handler:{row['id']}:{selected.rule}:{selected.position}",
                )
            )
    await job_store.enqueue(conn, handler_jobs)
    await record_inbound_media(conn, [(str(row["id"]), m.media) for m, row in fresh if m.media], now=now)


@cache
def _window_upsert(dialect: str) -> Any:
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(conversation_windows)
    current = conversation_windows.c.last_inbound_at
    newer = stmt.excluded.last_inbound_at
    return stmt.on_conflict_do_update(
        index_elements=["lead_id", "channel"],
        set_={"last_inbound_at": case((newer > current, newer), else_=current)},
    )


async def _open_windows(conn: AsyncConnection, fresh: list[tuple[InboundMessage, dict[str, Any]]]) -> None:
    """Each customer message (re)opens the 24-hour window on its channel; a late old message doesn't shrink it."""
    latest: dict[tuple[str, str], datetime] = {}
    for m, row in fresh:
        key = (row["lead_id"], m.channel)
        latest[key] = max(latest.get(key, m.timestamp), m.timestamp)
    await conn.execute(
        _window_upsert(conn.dialect.name),
        [
            {"lead_id": lead, "channel": channel, "last_inbound_at": at}
            for (lead, channel), at in sorted(latest.items())
        ],
    )


_UPDATE_LEAD_CONTACT = (
    update(leads)
    .where(
        leads.c.id == bindparam("lead"),
        or_(leads.c.last_inbound_at.is_(None), leads.c.last_inbound_at <= bindparam("at")),
    )
    .values(
        last_inbound_at=bindparam("at"),
        last_inbound_channel=bindparam("channel"),
        display_name=func.coalesce(bindparam("name"), leads.c.display_name),
    )
)


async def _update_lead_contact(conn: AsyncConnection, fresh: list[tuple[InboundMessage, dict[str, Any]]]) -> None:
    """The lead's last contact and profile name follow its newest message (one statement per batch)."""
    latest: dict[str, InboundMessage] = {}
    for m, row in fresh:
        current = latest.get(row["lead_id"])
        if current is None or m.timestamp >= current.timestamp:
            latest[row["lead_id"]] = m
    await conn.execute(
        _UPDATE_LEAD_CONTACT,
        [
            {"lead": lead_id, "at": m.timestamp, "channel": m.channel, "name": m.profile_name}
            for lead_id, m in sorted(latest.items())
        ],
    )


async def record_statuses(
    conn: AsyncConnection, statuses: Sequence[StatusUpdate], now: datetime, outcome: InboundOutcome | None = None
) -> None:
    """Keep every status report once; move known messages' statuses forward, never back."""
    outcome = outcome or InboundOutcome()
    rows = [
        {
            "provider": s.provider,
            "provider_message_id": s.provider_message_id,
            "status": s.status.value,
            "rank": s.status.rank,
            "occurred_at": s.timestamp,
            "error_code": s.error.code if s.error else None,
            "error_title": s.error.title if s.error else None,
            "error_detail": s.error.detail if s.error else None,
            "raw": s.raw,
            "received_at": now,
        }
        for s in statuses
    ]
    new_ids = await insert_ignoring_duplicates(
        conn, message_statuses, rows, conflict_columns=["provider", "provider_message_id", "status"], returning="id"
    )
    outcome.statuses_recorded = len(new_ids)
    keys = {(s.provider, s.provider_message_id) for s in statuses}
    for provider, provider_message_id in keys:
        if await apply_recorded_statuses(conn, provider, provider_message_id, now):
            outcome.statuses_applied += 1


async def statuses_recorded_for(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (provider, provider message id) pairs have status reports on record."""
    if not keys:
        return set()
    rows = await conn.execute(
        select(message_statuses.c.provider, message_statuses.c.provider_message_id)
        .where(
            message_statuses.c.provider.in_(sorted({provider for provider, _ in keys})),
            message_statuses.c.provider_message_id.in_(sorted({pmid for _, pmid in keys})),
        )
        .distinct()
    )
    wanted = set(keys)
    return {(provider, pmid) for provider, pmid in rows if (provider, pmid) in wanted}


async def apply_recorded_statuses(
    conn: AsyncConnection, provider: str, provider_message_id: str, now: datetime
) -> bool:
    """Bring a message's status up to the highest report on record for it.

    Called for every new report, and when an outbound message's provider id becomes known (the report
    may have come first). The update only ever raises ``status_rank``, in one statement, so concurrent
    reports cannot move a message backwards.
    """
    best = (
        await conn.execute(
            select(message_statuses)
            .where(
                message_statuses.c.provider == provider,
                message_statuses.c.provider_message_id == provider_message_id,
            )
            .order_by(message_statuses.c.rank.desc())
            .limit(1)
        )
    ).first()
    if best is None:
        return False
    error_values: dict[str, Any] = {}
    if best.error_code is not None:
        error_values = {"error_code": best.error_code, "error_title": best.error_title or best.error_detail}
    updated = (
        await conn.execute(
            update(messages)
            .where(
                messages.c.provider == provider,
                messages.c.provider_message_id == provider_message_id,
                messages.c.status_rank < best.rank,
            )
            .values(status=best.status, status_rank=best.rank, **error_values)
            .returning(messages.c.id, messages.c.lead_id, messages.c.channel)
        )
    ).first()
    if updated is None:
        return False
    status = DeliveryStatus(best.status)
    summary = status.value if best.error_code is None else f"{status.value}: {best.error_code} {best.error_title or ''}"
    await record_timeline(
        conn,
        [
            {
                "lead_id": updated.lead_id,
                "kind": TimelineKind.STATUS.value,
                "message_id": updated.id,
                "channel": updated.channel,
                "summary": summary.strip(),
                "data": {
                    "status": status.value,
                    "error_code": best.error_code,
                    "provider_message_id": provider_message_id,
                },
                "occurred_at": best.occurred_at,
                "dedupe_key": f"status:{provider}:{provider_message_id}:{status.value}",
            }
        ],
        now=now,
    )
    return True


async def window_open_since(conn: AsyncConnection, lead_id: str, channel: str) -> datetime | None:
    """When the customer last wrote on ``channel`` (the start of the current window), if ever."""
    row = await conn.execute(
        select(conversation_windows.c.last_inbound_at).where(
            and_(conversation_windows.c.lead_id == lead_id, conversation_windows.c.channel == channel)
        )
    )
    return row.scalar_one_or_none()


async def count_leads(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(leads))).scalar_one())
