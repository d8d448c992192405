"""Database access: one :class:`Database` per process, SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

import asyncio
import fcntl
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any, cast

import orjson
from sqlalchemy import Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Database:
    """Owns the engine. Writes go through :meth:`transaction`, reads through :meth:`read`.

    On SQLite a write transaction starts with ``BEGIN IMMEDIATE``: several processes may share the file,
    and a deferred transaction that reads before it writes would fail instead of waiting its turn.
    """

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = url
        self._lock_path: str | None = None
        self._lock_file: IO[bytes] | None = None
        self._thread_lock = threading.Lock()
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30}, json_serializer=_dumps)
            _configure_sqlite(self.engine)
            if parsed.database and parsed.database != ":memory:":
                self._lock_path = f"{parsed.database}.writer-lock"
        elif self.dialect == "postgresql":
            self.engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, json_serializer=_dumps
            )
        else:
            raise ValueError(f"unsupported database {self.dialect!r}: use sqlite+aiosqlite or postgresql+asyncpg")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer_turn(), self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        """On a SQLite file, wait for the writer lock the group-commit writers (DirectSQLite) queue on.

        Without it a transaction here meets a writer process that holds SQLite's lock almost all the time,
        and SQLite's busy handler polls for it with sleeps of up to 100 ms: a worker's claim would wait
        behind every batch. Waiting on the same ``flock`` queues it in the kernel instead.
        """
        if self._lock_path is None:
            yield
            return
        acquiring = asyncio.ensure_future(asyncio.to_thread(self._lock_writer))
        try:
            await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The thread still takes the lock: give it back once it has.
            acquiring.add_done_callback(lambda done: self._unlock_writer() if not done.exception() else None)
            raise
        try:
            yield
        finally:
            self._unlock_writer()

    def _lock_writer(self) -> None:
        # One holder per process (a flock is shared by everything using the same open file), then the file.
        self._thread_lock.acquire()
        try:
            if self._lock_file is None:
                assert self._lock_path is not None
                self._lock_file = open(self._lock_path, "a+b")  # noqa: SIM115 - held for the engine's life
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def _unlock_writer(self) -> None:
        assert self._lock_file is not None
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._thread_lock.release()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        In a write transaction from its first statement: processes starting together on a new SQLite
        file would otherwise both read the empty schema, and one would fail with "database is locked".
        """
        async with self.transaction() as conn:
            await conn.run_sync(_upgrade_to_head)

    async def close(self) -> None:
        await self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


class DirectConnection:
    """A synchronous connection behind :class:`AsyncConnection`'s ``execute``, for a writer process.

    Every ``await conn.execute`` through aiosqlite is several hand-offs between an event loop and
    aiosqlite's thread. The writers (store.writer) run the same async pipeline code on this instead: the
    awaits never suspend, so a whole batch runs straight through.
    """

    def __init__(self, connection: Connection):
        self._connection = connection

    @property
    def dialect(self) -> Any:
        return self._connection.dialect

    @property
    def info(self) -> dict[Any, Any]:
        return self._connection.info

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._connection.execute(statement, parameters)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        """A SAVEPOINT, as ``AsyncConnection.begin_nested``: rolled back alone if the block raises."""
        with self._connection.begin_nested():
            yield


class DirectSQLite:
    """The SQLite file through the standard library's driver, configured as :class:`Database` does."""

    def __init__(self, url: str):
        parsed = make_url(url)
        self.engine = create_engine(
            parsed.set(drivername="sqlite+pysqlite"), connect_args={"timeout": 30}, json_serializer=_dumps
        )
        _configure_sqlite_engine(self.engine)
        # Writers of several server processes queue on this lock in the kernel, which wakes the next one
        # the moment it is free; SQLite's own busy handler polls with sleeps of up to 100 ms.
        self._lock_file = open(f"{parsed.database}.writer-lock", "a+b")  # noqa: SIM115 - held for the engine's life

    @contextmanager
    def transaction(self) -> Iterator[AsyncConnection]:
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            with self._transaction() as conn:
                yield conn
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    @contextmanager
    def _transaction(self) -> Iterator[AsyncConnection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                # Only ``execute``, ``dialect``, ``info`` and ``begin_nested`` are used by the code run on it.
                yield cast(AsyncConnection, DirectConnection(conn))

    def close(self) -> None:
        self.engine.dispose()
        self._lock_file.close()


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _configure_sqlite(engine: AsyncEngine) -> None:
    _configure_sqlite_engine(engine.sync_engine)


def _configure_sqlite_engine(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly below (pysqlite's implicit BEGIN is always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


@cache
def _insert_ignoring(table: Table, dialect: str, conflict_columns: tuple[str, ...], returning: str | None) -> Any:
    # Built once: constructing an ON CONFLICT statement costs more than running it on SQLite.
    stmt: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict_columns))
    return stmt if returning is None else stmt.returning(table.c[returning])


async def insert_ignoring_duplicates(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict_columns: Iterable[str],
    returning: str | None = None,
) -> list[Any]:
    """Insert rows, skipping any that a unique constraint says exist already (from any process).

    Returns the ``returning`` column of the rows actually inserted, so the caller knows which facts are
    new. This is the database's guard against duplicates; nothing in memory is trusted for it.
    """
    if not rows:
        return []
    stmt = _insert_ignoring(table, conn.dialect.name, tuple(conflict_columns), returning)
    result = await conn.execute(stmt, list(rows))
    return [] if returning is None else list(result.scalars().all())
