"""Group commit for webhooks: every request waiting to be stored is committed in one transaction.

A webhook is answered only after its events are committed. Committing each request on its own would make
the database's commit (an fsync on SQLite) the ceiling on throughput; instead one task takes every
request waiting, records them all with :func:`handle_inbound` in one transaction, and then releases each
request. If that shared transaction fails, each request is retried in a transaction of its own, so one
bad request fails alone and the others still succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from leadline.config import RouterRule
from leadline.domain.messages import InboundEvent
from leadline.pipeline.inbound import InboundOutcome, handle_inbound
from leadline.store.db import Database

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Pending:
    events: Sequence[InboundEvent]
    done: asyncio.Future[None]


class Ingestor:
    def __init__(
        self,
        db: Database,
        rules: Sequence[RouterRule] = (),
        *,
        max_batch_events: int = 1000,
        on_commit: Callable[[], None] | None = None,
    ):
        self._db = db
        self._rules = rules
        self._max_batch_events = max_batch_events
        self.on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, events: Sequence[InboundEvent]) -> None:
        """Return once ``events`` are committed; raise if they could not be."""
        if not events:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="leadline-ingestor")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(events, done))
        await done

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].events)
            while size < self._max_batch_events and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.events)
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._store([event for item in batch for event in item.events])
        except Exception:
            if len(batch) == 1:
                log.exception("inbound_commit_failed", events=len(batch[0].events))
                _resolve(batch[0], error=RuntimeError("could not store the webhook's events"))
                return
            for item in batch:
                await self._commit([item])
            return
        for item in batch:
            _resolve(item)
        if self.on_commit is not None:
            self.on_commit()

    async def _store(self, events: list[InboundEvent]) -> InboundOutcome:
        async with self._db.transaction() as conn:
            return await handle_inbound(conn, events, rules=self._rules)


def _resolve(item: _Pending, error: BaseException | None = None) -> None:
    if item.done.done():  # the request went away (client disconnected); the events are stored regardless
        return
    if error is None:
        item.done.set_result(None)
    else:
        item.done.set_exception(error)
