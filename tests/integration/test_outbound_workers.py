"""Two ``leadline worker`` processes against one PostgreSQL database: every message sent exactly once.

The workers are real subprocesses. The test holds a lock on the job table until both are waiting on it,
so both start claiming at the same moment, then waits (polling the database, bounded) until every
message is accepted, and reads what the sandbox received.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from outbound_world import World, open_world, sent_json
from sqlalchemy import func, select, text

from conftest import META_APP_SECRET
from leadline.providers.meta.signature import meta_signature
from leadline.store.tables import jobs, messages

MESSAGES = 240
LEADLINE = str(Path(sys.executable).parent / "leadline")


def customers(count: int) -> list[str]:
    return [f"52155{i:08d}" for i in range(count)]


def many_customers_write(numbers: list[str]) -> bytes:
    """One Meta webhook in which each of ``numbers`` writes once (opening each one's window)."""
    now = str(int(datetime.now(UTC).timestamp()))
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001234", "phone_number_id": "420000000000002"},
        "contacts": [{"profile": {"name": f"Cliente {n}"}, "wa_id": n} for n in numbers],
        "messages": [
            {"from": n, "id": f"wamid.IN{n}", "timestamp": now, "type": "text", "text": {"body": "Hola"}}
            for n in numbers
        ],
    }
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "310000000000001", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(envelope).encode()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def worker_config_file(world: World, path: Path) -> Path:
    """The world's configuration as a TOML file for ``leadline worker`` (channels, database, worker)."""
    settings = world.config.settings
    lines = [f"database_url = {toml_value(settings.database_url)}", f"public_url = {toml_value(settings.public_url)}"]
    lines += ["[worker]", "batch_size = 5", "poll_interval = 0.05"]
    for channel in world.config.channels:
        lines.append("[[channels]]")
        for key, value in channel.model_dump(exclude_none=True).items():
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def waiting_on_locks(world: World) -> int:
    async with world.services.db.read() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return int((await conn.execute(query)).scalar_one())


async def accepted_count(world: World) -> int:
    async with world.services.db.read() as conn:
        query = select(func.count()).select_from(messages).where(messages.c.direction == "out")
        return int((await conn.execute(query.where(messages.c.status == "accepted"))).scalar_one())


async def until(check: Callable[[], Awaitable[bool]], *, seconds: float = 60.0, every: float = 0.05) -> None:
    """Poll ``check`` until it holds, at most ``seconds`` (the bound only keeps a broken run from hanging)."""
    for _ in range(int(seconds / every)):
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"still not so after {seconds} s")


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url) as opened:
        yield opened


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_worker_processes_send_each_message_exactly_once(world: World, tmp_path: Path) -> None:
    numbers = customers(MESSAGES)
    body = many_customers_write(numbers)
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta_signature(META_APP_SECRET, body)}
    async with world.http.post(f"{world.url}/webhooks/meta", data=body, headers=headers) as response:
        assert response.status == 200
    for start in range(0, MESSAGES, 40):
        await asyncio.gather(*(world.send(to=f"+{n}", text=f"para {n}") for n in numbers[start : start + 40]))
    config_file = worker_config_file(world, tmp_path / "leadline.toml")

    processes: list[asyncio.subprocess.Process] = []
    logs = [tmp_path / f"worker-{index}.log" for index in range(2)]
    try:
        async with world.services.db.transaction() as conn:
            await conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            for log in logs:
                with log.open("wb") as output:
                    processes.append(
                        await asyncio.create_subprocess_exec(
                            LEADLINE, "worker", "--config", str(config_file), cwd=tmp_path, stdout=output, stderr=output
                        )
                    )
            await until(lambda: waiting_on_locks_or_exited(world, processes))
        await until(lambda: all_accepted(world))
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
    assert [p.returncode for p in processes] == [0, 0], [log.read_text() for log in logs]

    sends = [sent_json(r) for r in await world.provider_requests("meta")]
    per_recipient = Counter(s["to"] for s in sends)
    assert set(per_recipient) == set(numbers)
    assert set(per_recipient.values()) == {1}
    async with world.services.db.read() as conn:
        rows = list(await conn.execute(select(jobs.c.state, jobs.c.locked_by).where(jobs.c.kind == "send_message")))
        provider_ids = list(
            (await conn.execute(select(messages.c.provider_message_id).where(messages.c.direction == "out"))).scalars()
        )
    assert {state for state, _ in rows} == {"done"}
    assert len({locked_by for _, locked_by in rows}) == 2  # both processes took part
    assert len(set(provider_ids)) == MESSAGES


async def waiting_on_locks_or_exited(world: World, processes: list[asyncio.subprocess.Process]) -> bool:
    assert all(p.returncode is None for p in processes), "a worker exited before claiming"
    return await waiting_on_locks(world) >= 2


async def all_accepted(world: World) -> bool:
    return await accepted_count(world) == MESSAGES
