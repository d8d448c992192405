"""Workers: claim jobs from the job table, run them, retry with backoff, bury what keeps failing.

Correctness never depends on this process: a job is claimed with a lease in the database, so a worker
that dies mid-job only delays it until the lease runs out, and any number of workers can run anywhere.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import WorkerConfig
from leadline.store import jobs as job_store
from leadline.store.db import Database
from leadline.store.jobs import Job

log = structlog.get_logger(__name__)


class RetryLater(Exception):
    """Run the job again after ``delay`` seconds (or the usual backoff), counting an attempt."""

    def __init__(self, message: str, *, delay: float | None = None):
        super().__init__(message)
        self.delay = delay

    def __reduce__(self) -> tuple[Any, ...]:  # may be answered from a writer process (store.writer)
        return (_retry_later, (str(self), self.delay))


def _retry_later(message: str, delay: float | None) -> RetryLater:
    return RetryLater(message, delay=delay)


class PermanentFailure(Exception):
    """Retrying cannot help: the job is buried at once and shows in the dead-letter list."""


class JobRun:
    """Handed to a job handler: lets it mark the job done inside its own transaction."""

    def __init__(self, job: Job, db: Database, clock: Callable[[], datetime]):
        self.job = job
        self.db = db
        self._clock = clock
        self.finished = False

    def now(self) -> datetime:
        return self._clock()

    async def finish(self, conn: AsyncConnection) -> None:
        """Mark the job done in ``conn``'s transaction, so its effects and its completion commit together."""
        self.finished = await job_store.finish(conn, self.job, now=self._clock())
        if not self.finished:
            raise RetryLater("lease lost: another worker owns this job now")


JobHandler = Callable[[Job, JobRun], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Worker:
    def __init__(
        self,
        db: Database,
        handlers: Mapping[str, JobHandler],
        config: WorkerConfig,
        *,
        worker_id: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ):
        self.db = db
        self.handlers = dict(handlers)
        self.config = config
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for work now instead of at the next poll (called after this process enqueues a job)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim one batch of due jobs and run them; returns how many were claimed."""
        async with self.db.read() as conn:
            if not await job_store.any_runnable(conn, now=self.clock(), kinds=list(self.handlers)):
                return 0
        async with self.db.transaction() as conn:
            claimed = await job_store.claim(
                conn,
                worker_id=self.worker_id,
                now=self.clock(),
                lease=timedelta(seconds=self.config.lease_seconds),
                limit=self.config.batch_size,
                kinds=list(self.handlers),
            )
        if claimed:
            await asyncio.gather(*(self._run(job) for job in claimed))
        return len(claimed)

    async def run_until_idle(self, max_rounds: int = 10_000) -> int:
        """Run until no job is due now. For tests and one-off drains; jobs waiting on backoff stay."""
        total = 0
        for _ in range(max_rounds):
            count = await self.run_once()
            if count == 0:
                break
            total += count
        return total

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                count = await self.run_once()
            except Exception:
                log.exception("worker_claim_failed", worker=self.worker_id)
                count = 0
            if count:
                continue
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=self.config.poll_interval, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    async def _run(self, job: Job) -> None:
        handler = self.handlers[job.kind]
        run = JobRun(job, self.db, self.clock)
        try:
            await handler(job, run)
        except PermanentFailure as exc:
            await self._bury(job, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            delay = exc.delay if isinstance(exc, RetryLater) else None
            await self._retry_or_bury(job, f"{type(exc).__name__}: {exc}", delay)
            return
        if not run.finished:
            async with self.db.transaction() as conn:
                await job_store.finish(conn, job, now=self.clock())

    def backoff(self, attempts: int) -> float:
        """Exponential with full jitter, so retries of many jobs that failed together spread out."""
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** max(attempts - 1, 0))
        return random.uniform(ceiling / 2, ceiling)

    async def _retry_or_bury(self, job: Job, error: str, delay: float | None) -> None:
        if job.attempts >= self.config.max_attempts:
            await self._bury(job, f"gave up after {job.attempts} attempts: {error}")
            return
        wait = delay if delay is not None else self.backoff(job.attempts)
        log.warning("job_retry", job_id=job.id, kind=job.kind, attempts=job.attempts, error=error, retry_in=wait)
        async with self.db.transaction() as conn:
            await job_store.release_for_retry(conn, job, error=error, run_after=self.clock() + timedelta(seconds=wait))

    async def _bury(self, job: Job, error: str) -> None:
        log.error("job_dead", job_id=job.id, kind=job.kind, attempts=job.attempts, error=error)
        async with self.db.transaction() as conn:
            await job_store.bury(conn, job, error=error, now=self.clock())
