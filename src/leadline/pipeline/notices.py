"""Provider notices (template status, account and quality updates) reach their own handlers here.

A handler is registered per topic (Meta's ``changes[].field``); a notice whose topic has no handler is
kept in ``provider_notices`` and its job simply finishes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import select

from leadline.pipeline.worker import JobHandler, JobRun
from leadline.store.jobs import Job
from leadline.store.tables import provider_notices

NoticeHandler = Callable[[dict[str, Any], JobRun], Awaitable[None]]
"""Called with the stored notice (``provider``, ``channel``, ``topic``, ``account_id``, ``payload``...)."""


def notice_job_handler(handlers: Mapping[str, NoticeHandler]) -> JobHandler:
    async def run(job: Job, run: JobRun) -> None:
        handler = handlers.get(job.payload["topic"])
        if handler is None:
            return
        async with run.db.read() as conn:
            row = (
                await conn.execute(
                    select(provider_notices).where(provider_notices.c.dedupe_key == job.payload["dedupe_key"])
                )
            ).first()
        if row is not None:
            await handler(dict(row._mapping), run)

    return run
