"""Group commit in a writer process: every request waiting is committed in one transaction.

Committing each request on its own would make the database's commit (an fsync on SQLite) the ceiling on
throughput. A :class:`BatchWriter` instead takes every request waiting, runs its ``write`` over all of
them in one transaction, and then answers each request. If that shared transaction fails, each request
is retried in a transaction of its own, so one bad request fails alone and the others still succeed.

The writing runs in a process of its own, started on first use and stopped by :meth:`BatchWriter.close`.
In a thread of the server's process it would share the interpreter lock with the HTTP server: the
driver releases and retakes that lock around every row it steps, and each retake waits for the server's
thread to yield, so both slowed each other down (measured in bench/inbound.py: the server's own CPU per
webhook more than doubled). The server only pickles the items and waits on a socket; requests and
answers cross it in frames, many requests to a frame, and what the work counted in leadline's metrics
comes back with the answers. On SQLite the writer process drives the file
directly (:class:`DirectSQLite`, which several writer processes share through a kernel lock); on
PostgreSQL it has its own connection pool.

``write`` and the items, results and errors must pickle: ``write`` is a module-level function or an
instance of a module-level class holding what it needs (configuration, rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import select
import signal
import socket
import struct
import sys
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline import metrics
from leadline.store.db import Database, DirectSQLite

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WriteBatch = Callable[[AsyncConnection, Sequence[T]], Awaitable[Sequence[R]]]
"""Writes a batch of requests in the given transaction; returns one result per request, in order."""

_LENGTH = struct.Struct("!I")
_STOP_SECONDS = 60


class WriterFailed(RuntimeError):
    """The writer could not commit a request (the reason is logged by the writer process)."""


class BatchWriter(Generic[T, R]):
    """``await submit(item)`` returns once ``item`` is committed (with ``write``'s result for it)."""

    def __init__(
        self,
        database_url: str,
        write: WriteBatch[T, R],
        *,
        name: str,
        max_batch: int = 1000,
        size: Callable[[T], int] | None = None,
    ):
        self._database_url = database_url
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._size: Callable[[T], int] = size or _one
        self._link: _Link | None = None
        self._starting: asyncio.Future[_Link] | None = None

    async def submit(self, item: T) -> R:
        """Return ``write``'s result for ``item`` once it is committed; raise what ``write`` raised for it alone."""
        link = await self._running_link()
        result: R = await link.submit(item)
        return result

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def _running_link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._link
        if link is not None and not link.broken and link.loop is loop:
            return link
        starting = self._starting
        if starting is None or starting.get_loop() is not loop:
            # One start for every request arriving meanwhile.
            starting = self._starting = loop.create_task(self._restart(loop, link))
        try:
            return await asyncio.shield(starting)
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None

    async def _restart(self, loop: asyncio.AbstractEventLoop, old: _Link | None) -> _Link:
        self._link = None
        if old is not None:
            await old.close() if old.loop is loop else old.abandon()
        self._link = await _Link.start(
            loop, self._database_url, self._write, name=self._name, max_batch=self._max_batch, size=self._size
        )
        return self._link


def _one(_: object) -> int:
    return 1


class _Link:
    """The server's side of one writer process: frames out, answers in, on one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        process: multiprocessing.process.BaseProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ):
        self.loop = loop
        self.broken = False
        self._process = process
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._outgoing: list[tuple[int, Any]] = []
        self._answers = loop.create_task(self._read_answers(), name="leadline-writer-answers")

    @classmethod
    async def start(
        cls,
        loop: asyncio.AbstractEventLoop,
        database_url: str,
        write: WriteBatch[Any, Any],
        *,
        name: str,
        max_batch: int,
        size: Callable[[Any], int],
    ) -> _Link:
        ours, theirs = socket.socketpair()
        process = _context().Process(
            target=_write_forever,
            args=(theirs, database_url, write, name, max_batch, size),
            name=f"leadline-{name}-writer",
            daemon=True,
        )
        _start_without_main(process)
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=2**24)
        return cls(loop, process, reader, writer)

    async def submit(self, item: Any) -> Any:
        if self.broken:
            raise WriterFailed("the writer process has stopped")
        request_id = next(self._ids)
        done = self.loop.create_future()
        self._waiting[request_id] = done
        if not self._outgoing:
            # Every request submitted in this turn of the event loop goes out in one frame.
            self.loop.call_soon(self._flush)
        self._outgoing.append((request_id, item))
        return await done

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if not outgoing or self.broken:
            return
        try:
            frame = pickle.dumps(outgoing, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            # Only what cannot be pickled fails; each request is tried alone to find it.
            if len(outgoing) > 1:
                for one in outgoing:
                    self._outgoing = [one]
                    self._flush()
                return
            log.exception("writer_request_not_picklable", writer=self._process.name)
            self._fail(outgoing[0][0], WriterFailed("the request could not be handed to the writer"))
            return
        self._writer.write(_LENGTH.pack(len(frame)) + frame)

    async def _read_answers(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(_LENGTH.size)
                answers, counts = pickle.loads(await self._reader.readexactly(_LENGTH.unpack(header)[0]))
                metrics.add_counts(counts)
                for request_id, failed, value in answers:
                    done = self._waiting.pop(request_id, None)
                    # The request may have gone away (client disconnected): it is committed regardless.
                    if done is None or done.done():
                        continue
                    if failed:
                        done.set_exception(value)
                    else:
                        done.set_result(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.broken = True
            for request_id in list(self._waiting):
                self._fail(request_id, WriterFailed("the writer process stopped before answering"))

    def _fail(self, request_id: int, error: Exception) -> None:
        done = self._waiting.pop(request_id, None)
        if done is not None and not done.done():
            done.set_exception(error)

    async def close(self) -> None:
        """Let the writer finish what it was given, then stop it."""
        self._flush()
        self.broken = True
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.write_eof()
            await self._writer.drain()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._answers), _STOP_SECONDS)
        self._writer.close()
        await asyncio.to_thread(self._stop)

    def abandon(self) -> None:
        """Stop a writer whose event loop has gone (its answers can no longer be delivered)."""
        self.broken = True
        with contextlib.suppress(Exception):
            self._writer.transport.get_extra_info("socket").close()
        self._stop()

    def _stop(self) -> None:
        self._process.join(_STOP_SECONDS)
        if self._process.is_alive():
            log.error("writer_did_not_stop", writer=self._process.name)
            self._process.kill()
            self._process.join()


def start_fork_server() -> None:
    """Boot the fork server that writers start from (it imports the pipeline: most of a second), so that
    the first request that needs a writer does not wait for it."""
    _context()
    multiprocessing.forkserver.ensure_running()


def _context() -> multiprocessing.context.ForkServerContext:
    # A fork server: each writer starts as a fork of a clean process that has already imported the
    # pipeline, in milliseconds, and never as a fork of a server with threads and an event loop running.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["leadline.store.writer", "leadline.pipeline.ingest", "leadline.pipeline.outbox"])
    return context


def _start_without_main(process: multiprocessing.process.BaseProcess) -> None:
    """Start ``process`` without multiprocessing running the server's main script in it.

    multiprocessing re-runs the parent's ``__main__`` in every child it starts this way (so that objects
    defined there unpickle); a writer needs nothing from it, and it cost up to 150 ms per writer (all of
    pytest in a test run) and would run an unguarded script's own work again. The writer's target and
    arguments live in leadline's modules. Runs on the event loop's thread, the only one that starts
    writers, so nothing else sees the swap.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main


# --------------------------------------------------------------------------------------------
# The writer process


def _write_forever(
    link: socket.socket,
    database_url: str,
    write: WriteBatch[Any, Any],
    name: str,
    max_batch: int,
    size: Callable[[Any], int],
) -> None:
    from leadline.logging import configure_logging

    # Stopped by its server, not by the signals of a terminal or a service manager sent to the whole
    # group: it finishes the batch in hand and exits when the server closes the link (or dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(os.environ.get("LEADLINE_LOG_LEVEL", "info"))
    loop = asyncio.new_event_loop()
    db: Database | DirectSQLite = (
        DirectSQLite(database_url) if make_url(database_url).get_backend_name() == "sqlite" else Database(database_url)
    )
    frames = _Frames(link)
    counted = metrics.counter_values()
    try:
        while True:
            batch = frames.next_batch(max_batch, size)
            if batch is None:
                return
            answers = loop.run_until_complete(_commit(db, write, name, batch))
            # What the work counted (routing decisions, circuits closing...) is shown by the server's /metrics.
            counted, counts = metrics.counted_since(counted)
            frame = pickle.dumps((answers, counts), protocol=pickle.HIGHEST_PROTOCOL)
            link.sendall(_LENGTH.pack(len(frame)) + frame)
    except (BrokenPipeError, ConnectionResetError):
        return  # the server has gone: nobody is waiting for answers
    finally:
        if isinstance(db, DirectSQLite):
            db.close()
        else:
            loop.run_until_complete(db.close())
        loop.close()
        link.close()


class _Frames:
    """Requests as they arrive: a batch is every request waiting, up to ``max_batch``."""

    def __init__(self, link: socket.socket):
        self._link = link
        self._buffer = bytearray()
        self._pending: list[tuple[int, Any]] = []

    def next_batch(self, max_batch: int, size: Callable[[Any], int]) -> list[tuple[int, Any]] | None:
        while not self._pending:
            if not self._receive(block=True):
                return None
        while self._receive(block=False):
            pass
        batch: list[tuple[int, Any]] = []
        total = 0
        while self._pending and (not batch or total < max_batch):
            request = self._pending.pop(0)
            batch.append(request)
            total += size(request[1])
        return batch

    def _receive(self, *, block: bool) -> bool:
        """Read what has arrived (waiting for something if ``block``); False at the end of input."""
        if not block and not select.select([self._link], [], [], 0)[0]:
            return False
        chunk = self._link.recv(1 << 20)
        if not chunk:
            return False
        self._buffer += chunk
        while len(self._buffer) >= _LENGTH.size:
            length = _LENGTH.unpack_from(self._buffer)[0]
            if len(self._buffer) < _LENGTH.size + length:
                break
            frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
            del self._buffer[: _LENGTH.size + length]
            self._pending.extend(pickle.loads(frame))
        return True


async def _store(db: Database | DirectSQLite, write: WriteBatch[Any, Any], items: list[Any]) -> Sequence[Any]:
    if isinstance(db, DirectSQLite):
        with db.transaction() as conn:
            return await write(conn, items)
    async with db.transaction() as conn:
        return await write(conn, items)


async def _commit(
    db: Database | DirectSQLite, write: WriteBatch[Any, Any], name: str, batch: list[tuple[int, Any]]
) -> list[tuple[int, bool, Any]]:
    try:
        results = await _store(db, write, [item for _, item in batch])
    except Exception as exc:
        if len(batch) == 1:
            log.exception(f"{name}_commit_failed")
            return [(batch[0][0], True, _picklable(exc))]
        answers = []
        for request in batch:
            answers.extend(await _commit(db, write, name, [request]))
        return answers
    return [(request_id, False, result) for (request_id, _), result in zip(batch, results, strict=True)]


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return WriterFailed(f"{type(exc).__name__}: {exc}")
    return exc
