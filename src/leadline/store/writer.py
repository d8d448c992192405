"""Group commit: a writer thread that commits every request waiting in one transaction.

Committing each request on its own would make the database's commit (an fsync on SQLite) and, on the
server's event loop, the hand-off of every statement to the driver's thread, the ceiling on throughput.
A :class:`BatchWriter` instead takes every request waiting, runs its ``write`` over all of them in one
transaction, and then answers each request. If that shared transaction fails, each request is retried in
a transaction of its own, so one bad request fails alone and the others still succeed.

The writer runs in a thread of its own: on the server's event loop each statement would wait behind every
HTTP request being parsed. On SQLite it drives the file directly (:class:`DirectSQLite`), so a batch runs
straight through; on PostgreSQL it has its own event loop and connection pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.store.db import Database, DirectSQLite

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WriteBatch = Callable[[AsyncConnection, Sequence[T]], Awaitable[Sequence[R]]]
"""Writes a batch of requests in the given transaction; returns one result per request, in order."""


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    done: concurrent.futures.Future[R]


class BatchWriter(Generic[T, R]):
    """``await submit(item)`` returns once ``item`` is committed (with ``write``'s result for it)."""

    def __init__(
        self,
        database_url: str,
        write: WriteBatch[T, R],
        *,
        name: str,
        max_batch: int = 1000,
        size: Callable[[T], int] = lambda _: 1,
    ):
        self._database_url = database_url
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._size = size
        self._requests: queue.SimpleQueue[_Pending[T, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, item: T) -> R:
        """Return ``write``'s result for ``item`` once it is committed; raise what ``write`` raised for it alone."""
        self._ensure_writer()
        done: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._requests.put(_Pending(item, done))
        return await asyncio.wrap_future(done)

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._write_forever, name=f"leadline-{self._name}", daemon=True)
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
                size = self._size(first.item)
                stop = False
                while size < self._max_batch:
                    try:
                        pending = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if pending is None:
                        stop = True
                        break
                    batch.append(pending)
                    size += self._size(pending.item)
                loop.run_until_complete(self._commit(db, batch))
                if stop:
                    return
        finally:
            if isinstance(db, DirectSQLite):
                db.close()
            else:
                loop.run_until_complete(db.close())
            loop.close()

    async def _store(self, db: Database | DirectSQLite, items: list[T]) -> Sequence[R]:
        if isinstance(db, DirectSQLite):
            with db.transaction() as conn:
                return await self._write(conn, items)
        async with db.transaction() as conn:
            return await self._write(conn, items)

    async def _commit(self, db: Database | DirectSQLite, batch: list[_Pending[T, R]]) -> None:
        try:
            results = await self._store(db, [pending.item for pending in batch])
        except Exception as exc:
            if len(batch) == 1:
                log.exception(f"{self._name}_commit_failed")
                with _request_gone:
                    batch[0].done.set_exception(exc)
                return
            for pending in batch:
                await self._commit(db, [pending])
            return
        for pending, result in zip(batch, results, strict=True):
            with _request_gone:
                pending.done.set_result(result)


# The request may have gone away (client disconnected): what it asked for is committed regardless.
_request_gone = contextlib.suppress(concurrent.futures.InvalidStateError)
