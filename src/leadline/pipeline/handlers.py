"""Running router handlers from the job table, with lead actions that commit with the job."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.domain.timeline import TimelineKind
from leadline.pipeline.router import UnknownHandler, resolve_handler
from leadline.pipeline.worker import JobRun, PermanentFailure
from leadline.store import jobs as job_store
from leadline.store.jobs import Job
from leadline.store.tables import leads, messages
from leadline.store.timeline import callback_job, record_timeline


class LeadActions:
    """The :class:`~leadline.pipeline.router.HandlerContext` given to handlers, bound to one transaction."""

    def __init__(self, conn: AsyncConnection, job: Job, message: dict[str, Any]):
        self._conn = conn
        self._job = job
        self.lead_id: str = job.payload["lead_id"]
        self.message = message

    async def _timeline(self, kind: TimelineKind, summary: str, data: dict[str, Any], key: str) -> None:
        await record_timeline(
            self._conn,
            [
                {
                    "lead_id": self.lead_id,
                    "kind": kind.value,
                    "message_id": self.message["id"],
                    "channel": self.message["channel"],
                    "summary": summary,
                    "data": data,
                    "occurred_at": datetime.now(UTC),
                    "dedupe_key": f"job:{self._job.id}:{kind.value}:{key}",
                }
            ],
            now=datetime.now(UTC),
        )

    async def tag(self, tag: str) -> None:
        current = (await self._conn.execute(select(leads.c.tags).where(leads.c.id == self.lead_id))).scalar_one()
        if tag in current:
            return
        await self._conn.execute(update(leads).where(leads.c.id == self.lead_id).values(tags=[*current, tag]))
        await self._timeline(TimelineKind.TAG, f"tagged {tag}", {"tag": tag}, tag)

    async def assign_owner(self, owner: str) -> None:
        await self._conn.execute(update(leads).where(leads.c.id == self.lead_id).values(owner=owner))
        await self._timeline(TimelineKind.OWNER, f"assigned to {owner}", {"owner": owner}, owner)

    async def forward_to_crm(self, subscriber: str) -> None:
        await job_store.enqueue(
            self._conn,
            [
                callback_job(
                    subscriber,
                    self.lead_id,
                    f"in:{self.message['provider']}:{self.message['provider_message_id']}",
                    datetime.now(UTC),
                )
            ],
        )

    async def add_note(self, text: str) -> None:
        await self._timeline(TimelineKind.NOTE, text, {"text": text}, hashlib.sha256(text.encode()).hexdigest()[:16])


async def run_handler_job(job: Job, run: JobRun) -> None:
    try:
        handler = resolve_handler(job.payload["handler"])
    except UnknownHandler as exc:
        raise PermanentFailure(str(exc)) from exc
    async with run.db.transaction() as conn:
        row = (await conn.execute(select(messages).where(messages.c.id == job.payload["message_id"]))).first()
        if row is None:
            raise PermanentFailure(f"message {job.payload['message_id']} no longer exists")
        message = dict(row._mapping)
        await handler(LeadActions(conn, job, message), **job.payload.get("args", {}))
        await run.finish(conn)
