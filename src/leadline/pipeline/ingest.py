"""Group commit for webhooks: every request waiting to be stored is committed in one transaction.

A webhook is answered only after its events are committed. Committing each request on its own would make
the database's commit (an fsync on SQLite) the ceiling on throughput; instead one writer takes every
request waiting, records them all with :func:`handle_inbound` in one transaction, and then releases each
request. If that shared transaction fails, each request is retried in a transaction of its own, so one
bad request fails alone and the others still succeed.

The writer runs in a thread of its own. On the server's event loop, each of the transaction's statements
would wait behind every HTTP request being parsed, and under load a batch took several times longer than
its SQL. On SQLite the writer drives the file directly (store.db.DirectSQLite), so a batch runs straight
through; on PostgreSQL it has its own event loop and connection pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.engine import make_url

from leadline.config import RouterRule
from leadline.domain.messages import InboundEvent
from leadline.pipeline.inbound import handle_inbound
from leadline.store.db import Database, DirectSQLite

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Pending:
    events: Sequence[InboundEvent]
    done: concurrent.futures.Future[None]


class Ingestor:
    def __init__(
        self,
        database_url: str,
        rules: Sequence[RouterRule] = (),
        *,
        max_batch_events: int = 1000,
        on_commit: Callable[[], None] | None = None,
    ):
        self._database_url = database_url
        self._rules = rules
        self._max_batch_events = max_batch_events
        self.on_commit = on_commit
        self._requests: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, events: Sequence[InboundEvent]) -> None:
        """Return once ``events`` are committed; raise if they could not be."""
        if not events:
            return
        self._ensure_writer()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._requests.put(_Pending(events, done))
        await asyncio.wrap_future(done)
        if self.on_commit is not None:
            self.on_commit()

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._write_forever, name="leadline-ingestor", daemon=True)
                self._thread.start()

    async def close(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._requests.put(None)
            await asyncio.to_thread(thread.join)
        self._thread = None

    def _write_forever(self) -> None:
        loop = asyncio.new_event_loop()
        db: Database | DirectSQLite = (
            DirectSQLite(self._database_url)
            if make_url(self._database_url).get_backend_name() == "sqlite"
            else Database(self._database_url)
        )
        try:
            while True:
                first = self._requests.get()
                if first is None:
                    return
                batch = [first]
                size = len(first.events)
                stop = False
                while size < self._max_batch_events:
                    try:
                        item = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                    size += len(item.events)
                loop.run_until_complete(self._commit(db, batch))
                if stop:
                    return
        finally:
            if isinstance(db, DirectSQLite):
                db.close()
            else:
                loop.run_until_complete(db.close())
            loop.close()

    async def _store(self, db: Database | DirectSQLite, events: list[InboundEvent]) -> None:
        if isinstance(db, DirectSQLite):
            with db.transaction() as conn:
                await handle_inbound(conn, events, rules=self._rules)
        else:
            async with db.transaction() as conn:
                await handle_inbound(conn, events, rules=self._rules)

    async def _commit(self, db: Database | DirectSQLite, batch: list[_Pending]) -> None:
        try:
            await self._store(db, [event for item in batch for event in item.events])
        except Exception as exc:
            if len(batch) == 1:
                log.exception("inbound_commit_failed", events=len(batch[0].events))
                _resolve(batch[0], RuntimeError(f"could not store the webhook's events: {type(exc).__name__}"))
                return
            for item in batch:
                await self._commit(db, [item])
            return
        for item in batch:
            _resolve(item)


def _resolve(item: _Pending, error: BaseException | None = None) -> None:
    # The request may have gone away (client disconnected): its events are stored regardless.
    try:
        if error is None:
            item.done.set_result(None)
        else:
            item.done.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass
