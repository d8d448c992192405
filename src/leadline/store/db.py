"""Database access: one :class:`Database` per process, SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Database:
    """Owns the engine. Writes go through :meth:`transaction`, reads through :meth:`read`.

    On SQLite a write transaction starts with ``BEGIN IMMEDIATE``: several processes may share the file,
    and a deferred transaction that reads before it writes would fail instead of waiting its turn.
    """

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30})
            _configure_sqlite(self.engine)
        elif self.dialect == "postgresql":
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        else:
            raise ValueError(f"unsupported database {self.dialect!r}: use sqlite+aiosqlite or postgresql+asyncpg")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade_to_head)

    async def close(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly below (pysqlite's implicit BEGIN is always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
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
    dialect = conn.dialect.name
    stmt: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict_columns))
    if returning is None:
        await conn.execute(stmt, list(rows))
        return []
    stmt = stmt.returning(table.c[returning])
    result = await conn.execute(stmt, list(rows))
    return list(result.scalars().all())
