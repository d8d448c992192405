"""The durable job table: enqueue in the caller's transaction, claim with a lease, finish or retry.

Any number of worker processes on any number of hosts share it. On PostgreSQL a claim locks its rows
with ``FOR UPDATE SKIP LOCKED``, so two workers never take the same job; on SQLite the write lock does
the same. A job whose ``order_key`` has an earlier unfinished job waits for it: one lead's jobs run in
order.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import jobs


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    """Out of attempts, or failed for good: listed and re-driven by ``leadline outbox``."""


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    order_key: str | None
    attempts: int
    locked_by: str | None


def new_job(
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    order_key: str | None = None,
    dedupe_key: str | None = None,
    run_after: datetime | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "payload": payload,
        "order_key": order_key,
        "state": JobState.PENDING.value,
        "attempts": 0,
        "run_after": run_after or now,
        "created_at": now,
        "dedupe_key": dedupe_key,
    }


_QUEUED_FLAG = "leadline.jobs_queued"


def start_noting_queued(conn: AsyncConnection) -> None:
    """From now on, :func:`queued_any` tells whether a job was queued on ``conn``."""
    conn.info[_QUEUED_FLAG] = False


def queued_any(conn: AsyncConnection) -> bool:
    """Whether a job was queued on ``conn`` since :func:`start_noting_queued` (so a worker is worth waking)."""
    return bool(conn.info.get(_QUEUED_FLAG))


async def enqueue(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Add jobs in the caller's transaction; a job whose ``dedupe_key`` exists already is not added twice."""
    if rows:
        conn.info[_QUEUED_FLAG] = True
    keyed = [r for r in rows if r["dedupe_key"] is not None]
    unkeyed = [r for r in rows if r["dedupe_key"] is None]
    await insert_ignoring_duplicates(conn, jobs, keyed, conflict_columns=["dedupe_key"])
    if unkeyed:
        await conn.execute(jobs.insert(), unkeyed)


_UNFINISHED = (JobState.PENDING.value, JobState.RUNNING.value)


def _runnable(now: datetime) -> Any:
    return or_(
        and_(jobs.c.state == JobState.PENDING.value, jobs.c.run_after <= now),
        and_(jobs.c.state == JobState.RUNNING.value, jobs.c.locked_until < now),
    )


async def any_runnable(conn: AsyncConnection, *, now: datetime, kinds: Sequence[str] | None = None) -> bool:
    """A cheap read before a claim: on SQLite a claim takes the write lock, which an idle poll must not."""
    query = select(jobs.c.id).where(_runnable(now)).limit(1)
    if kinds is not None:
        query = query.where(jobs.c.kind.in_(kinds))
    return (await conn.execute(query)).first() is not None


async def claim(
    conn: AsyncConnection,
    *,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    kinds: Sequence[str] | None = None,
) -> list[Job]:
    """Take up to ``limit`` runnable jobs: pending and due, or running with an expired lease."""
    earlier = jobs.alias("earlier")
    blocked_by_earlier = exists().where(
        earlier.c.order_key == jobs.c.order_key,
        earlier.c.id < jobs.c.id,
        earlier.c.state.in_(_UNFINISHED),
    )
    query = (
        select(jobs.c.id)
        .where(_runnable(now), or_(jobs.c.order_key.is_(None), ~blocked_by_earlier))
        .order_by(jobs.c.id)
        .limit(limit)
    )
    if kinds is not None:
        query = query.where(jobs.c.kind.in_(kinds))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=jobs)
    ids = list((await conn.execute(query)).scalars())
    if not ids:
        return []
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(ids))
        .values(
            state=JobState.RUNNING.value,
            locked_by=worker_id,
            locked_until=now + lease,
            attempts=jobs.c.attempts + 1,
        )
        .returning(jobs.c.id, jobs.c.kind, jobs.c.payload, jobs.c.order_key, jobs.c.attempts, jobs.c.locked_by)
    )
    claimed = [Job(r.id, r.kind, r.payload, r.order_key, r.attempts, r.locked_by) for r in result]
    return sorted(claimed, key=lambda job: job.id)


async def finish(conn: AsyncConnection, job: Job, *, now: datetime) -> bool:
    """Mark a job done. False if this worker's lease was lost and another worker owns the job now."""
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job.id, jobs.c.locked_by == job.locked_by, jobs.c.state == JobState.RUNNING.value)
        .values(state=JobState.DONE.value, finished_at=now, locked_until=None, last_error=None)
    )
    return result.rowcount == 1


async def still_owned(conn: AsyncConnection, owned: Sequence[Job]) -> set[int]:
    """The ids of these jobs whose lease their claimer still holds, locked for the rest of the transaction
    (on PostgreSQL; SQLite's write lock does the same), so :func:`finish_all` cannot lose them meanwhile."""
    if not owned:
        return set()
    rows = await conn.execute(
        select(jobs.c.id, jobs.c.locked_by)
        .where(jobs.c.id.in_([job.id for job in owned]), jobs.c.state == JobState.RUNNING.value)
        .with_for_update()
    )
    holders = {job.id: job.locked_by for job in owned}
    return {job_id for job_id, locked_by in rows if holders[job_id] == locked_by}


_FINISH = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"))
    .values(state=JobState.DONE.value, finished_at=bindparam("now"), locked_until=None, last_error=None)
)


async def finish_all(conn: AsyncConnection, owned: Sequence[Job], *, now: datetime) -> None:
    """Mark jobs done in one statement; only for jobs :func:`still_owned` found owned in this transaction."""
    if owned:
        await conn.execute(_FINISH, [{"job_id": job.id, "now": now} for job in owned])


async def release_for_retry(conn: AsyncConnection, job: Job, *, error: str, run_after: datetime) -> None:
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == job.id, jobs.c.locked_by == job.locked_by)
        .values(state=JobState.PENDING.value, run_after=run_after, locked_until=None, last_error=error[:2000])
    )


async def bury(conn: AsyncConnection, job: Job, *, error: str, now: datetime) -> None:
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == job.id, jobs.c.locked_by == job.locked_by)
        .values(state=JobState.DEAD.value, finished_at=now, locked_until=None, last_error=error[:2000])
    )


async def redrive(conn: AsyncConnection, job_ids: Sequence[int] | None, *, now: datetime) -> int:
    """Put dead jobs back in the queue (all of them when ``job_ids`` is None), attempts reset."""
    stmt = update(jobs).where(jobs.c.state == JobState.DEAD.value)
    if job_ids is not None:
        stmt = stmt.where(jobs.c.id.in_(job_ids))
    result = await conn.execute(
        stmt.values(state=JobState.PENDING.value, attempts=0, run_after=now, finished_at=None, locked_by=None)
    )
    return result.rowcount


async def list_jobs(conn: AsyncConnection, *, state: JobState | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(jobs.c.state == state.value)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def count_by_state(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
    return {state: count for state, count in rows}
