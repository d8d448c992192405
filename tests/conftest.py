"""Shared fixtures: real databases (an SQLite file, a PostgreSQL server) and a real HTTP server.

PostgreSQL tests use ``LEADLINE_TEST_POSTGRES_URL`` (scripts/postgres.sh starts a server and prints it).
Without it they are skipped, unless ``LEADLINE_REQUIRE_POSTGRES=1`` (CI), which makes that an error.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import text

from leadline.api.app import create_app
from leadline.bootstrap import Services
from leadline.config import LeadlineConfig, config_from_mapping
from leadline.store.db import Database
from leadline.store.tables import metadata

POSTGRES_URL = os.environ.get("LEADLINE_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("LEADLINE_REQUIRE_POSTGRES") == "1"

META_APP_SECRET = "meta-app-secret-for-tests-0001"
META_VERIFY_TOKEN = "meta-verify-token-for-tests"
TWILIO_AUTH_TOKEN = "12345678901234567890123456789012"
TWILIO_ACCOUNT_SID = "AC00000000000000000000000000000001"
API_KEY = "test-api-key-0123456789abcdef"
PUBLIC_URL = "https://leadline.example.com"


def base_config(database_url: str, **overrides: Any) -> dict[str, Any]:
    """The configuration most tests run with: two Meta numbers and one Twilio sender."""
    data: dict[str, Any] = {
        "database_url": database_url,
        "public_url": PUBLIC_URL,
        "api_keys": [{"name": "tests", "key": API_KEY}],
        "channels": [
            {
                "name": "meta-main",
                "provider": "meta",
                "business_number": "+15550001234",
                "phone_number_id": "420000000000002",
                "waba_id": "310000000000001",
                "app_secret": META_APP_SECRET,
                "verify_token": META_VERIFY_TOKEN,
                "access_token": "meta-access-token",
            },
            {
                "name": "meta-second",
                "provider": "meta",
                "business_number": "+15550009999",
                "phone_number_id": "420000000000009",
                "waba_id": "310000000000009",
                "app_secret": META_APP_SECRET,
                "verify_token": META_VERIFY_TOKEN,
                "access_token": "meta-access-token",
            },
            {
                "name": "twilio-main",
                "provider": "twilio",
                "business_number": "+15550001234",
                "account_sid": TWILIO_ACCOUNT_SID,
                "auth_token": TWILIO_AUTH_TOKEN,
            },
        ],
    }
    data.update(overrides)
    return data


# --------------------------------------------------------------------------------------------
# Databases


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test (migrating per test would be slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.migrate()
        await db.close()  # the last connection to close folds the WAL into the file we copy

    asyncio.run(migrate())
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> str:
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("LEADLINE_REQUIRE_POSTGRES=1 but LEADLINE_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need LEADLINE_TEST_POSTGRES_URL (scripts/postgres.sh starts a server)")

    async def migrate() -> None:
        db = Database(POSTGRES_URL)
        async with db.transaction() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await db.migrate()
        await db.close()

    asyncio.run(migrate())
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every test that takes this runs twice: on an SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "leadline.db"
        shutil.copy(template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    url: str = request.getfixturevalue("postgres_migrated")

    async def truncate() -> None:
        db = Database(url)
        async with db.transaction() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        await db.close()

    asyncio.run(truncate())
    yield url


@pytest.fixture
def config(database_url: str) -> LeadlineConfig:
    return config_from_mapping(base_config(database_url))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


# --------------------------------------------------------------------------------------------
# A real HTTP server


class RunningApp:
    def __init__(self, url: str, services: Services):
        self.url = url
        self.services = services

    async def drain_jobs(self) -> int:
        """Run every due job now, as a worker process would."""
        return await self.services.new_worker().run_until_idle()


@asynccontextmanager
async def running_app(config: LeadlineConfig, *, run_worker: bool = False) -> AsyncIterator[RunningApp]:
    app = create_app(config, run_worker=run_worker)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield RunningApp(f"http://127.0.0.1:{port}", app.state.services)
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def app(config: LeadlineConfig) -> AsyncIterator[RunningApp]:
    async with running_app(config) as running:
        yield running
