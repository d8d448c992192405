"""Outbound end to end: POST /v1/messages → outbox → worker → provider, in messages accepted per second.

Three processes: a minimal aiohttp stub that answers every send with Meta's success JSON (a fresh wamid
each time), ``leadline serve`` (uvicorn, SQLite, its in-process worker, the channel's rate limit off),
optionally ``--workers N`` extra ``leadline worker`` processes, and this script, which first measures
the stub's own ceiling (an aiohttp client hammering it directly, same concurrency) and then posts
``--messages`` sends through the API with ``--concurrency`` in flight and polls the database until every
one has reached ``accepted``.

    .venv/bin/python bench/outbound.py [--messages 5000] [--concurrency 64] [--workers 0] [--batch-size 100]
        [--no-serve-worker]

Each message goes to its own customer (one lead's messages are sent one after the other, by design),
whose 24-hour window a webhook opened before the clock starts. A run of the defaults takes under a minute
at the figures in bench/README.md; ``--messages 3000`` is enough to see them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from leadline.providers.meta.signature import meta_signature

API_KEY = "bench-api-key-0123456789abcdef"
APP_SECRET = "bench-app-secret"
PHONE_NUMBER_ID = "420000000000002"
LEADLINE = str(Path(sys.executable).parent / "leadline")


# --------------------------------------------------------------------------------------------
# The provider stub


def _serve_stub(ready: Connection) -> None:
    counter = itertools.count()

    async def messages(request: web.Request) -> web.Response:
        payload = await request.read()
        to = orjson.loads(payload)["to"]
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"wamid.BENCH{next(counter)}", "message_status": "accepted"}],
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v25.0/{phone_number_id}/messages", messages)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # connections wait in the backlog until the app serves them
    ready.send(sock.getsockname()[1])
    web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_concurrently(calls: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> float:
    """Seconds for ``calls`` calls of ``call(index)`` with ``concurrency`` in flight."""
    indexes = iter(range(calls))

    async def lane() -> None:
        for index in indexes:
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - started


async def stub_ceiling(stub_url: str, requests: int, concurrency: int) -> float:
    body = orjson.dumps(
        {"messaging_product": "whatsapp", "to": "5215512345678", "type": "text", "text": {"body": "Tu pedido"}}
    )
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    url = f"{stub_url}/v25.0/{PHONE_NUMBER_ID}/messages"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def call(_: int) -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()

        await run_concurrently(min(500, requests), concurrency, call)  # warm-up
        seconds = await run_concurrently(requests, concurrency, call)
    return requests / seconds


# --------------------------------------------------------------------------------------------
# leadline


def write_config(directory: Path, stub_url: str, batch_size: int) -> Path:
    config = f"""
database_url = "sqlite+aiosqlite:///{directory}/leadline.db"
public_url = "https://leadline.example.com"
log_level = "warning"
api_keys = [{{ name = "bench", key = "{API_KEY}" }}]

[worker]
batch_size = {batch_size}
poll_interval = 0.05

[media]
storage_dir = "{directory}/media"

[[channels]]
name = "meta-main"
provider = "meta"
business_number = "+15550001234"
phone_number_id = "{PHONE_NUMBER_ID}"
waba_id = "310000000000001"
app_secret = "{APP_SECRET}"
verify_token = "bench-verify"
access_token = "bench-token"
api_base_url = "{stub_url}/v25.0"
rate_limit_per_second = 0
"""
    path = directory / "leadline.toml"
    path.write_text(config, encoding="utf-8")
    return path


def customer(index: int) -> str:
    return f"52155{index:08d}"


def inbound_webhook(numbers: list[str]) -> bytes:
    now = str(int(time.time()))
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Bench"}, "wa_id": n} for n in numbers],
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


async def wait_until_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        try:
            async with session.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("leadline did not start")


def accepted(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute("SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'accepted'").fetchone()
    return int(row[0])


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time used so far by each named process, and by its descendants (leadline's writer
    processes) under the name + " writers", from Linux /proc: robust on a shared machine."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime+stime
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, pid in pids.items():
        family = {pid}
        while grown := {child for child, (ppid, _) in stats.items() if ppid in family} - family:
            family |= grown
        seconds[name] = stats[pid][1] / tick if pid in stats else 0.0
        seconds[f"{name} writers"] = sum(stats[p][1] for p in family - {pid} if p in stats) / tick
    return seconds


async def end_to_end(
    url: str, db_path: Path, messages: int, concurrency: int, pids: dict[str, int]
) -> tuple[float, float, dict[str, float]]:
    """(sends accepted by the API per second, messages accepted by the provider per second, leadline's CPU
    milliseconds per message, per process and writers)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await wait_until_up(session, url)
        for start in range(0, messages, 500):
            body = inbound_webhook([customer(i) for i in range(start, min(start + 500, messages))])
            signed = {"Content-Type": "application/json", "X-Hub-Signature-256": meta_signature(APP_SECRET, body)}
            async with session.post(f"{url}/webhooks/meta", data=body, headers=signed) as response:
                assert response.status == 200, await response.text()

        async def post(index: int) -> None:
            body = {"to": f"+{customer(index)}", "text": f"Tu pedido {index} sale hoy"}
            async with session.post(f"{url}/v1/messages", json=body, headers=headers) as response:
                assert response.status == 202, await response.text()

        cpu_before = cpu_seconds(pids)
        started = time.perf_counter()
        posting = await run_concurrently(messages, concurrency, post)
        for _ in range(60_000):  # polls for at most 20 minutes
            if accepted(db_path) >= messages:
                break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("the messages were not all accepted")
        total = time.perf_counter() - started
        cpu_after = cpu_seconds(pids)
        cpu_ms = {name: (cpu_after[name] - cpu_before[name]) * 1000 / messages for name in cpu_after}
    return messages / posting, messages / total, cpu_ms


async def main(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    stub = context.Process(target=_serve_stub, args=(send,), daemon=True)
    stub.start()
    stub_url = f"http://127.0.0.1:{receive.recv()}"
    processes: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="leadline-bench-") as tmp:
        directory = Path(tmp)
        config = write_config(directory, stub_url, args.batch_size)
        port = free_port()
        env = {**os.environ, "LEADLINE_CONFIG": str(config)}
        log = (directory / "leadline.log").open("wb")
        try:
            ceiling = await stub_ceiling(stub_url, args.messages, args.concurrency)
            processes.append(
                await asyncio.create_subprocess_exec(
                    LEADLINE,
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(port),
                    *(["--no-worker"] if args.no_serve_worker else []),
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                )
            )
            # The workers start once serve has migrated the fresh database: processes that all migrate it at
            # the same moment can fail with "database is locked" (Alembic's transaction is a deferred one).
            async with aiohttp.ClientSession() as session:
                await wait_until_up(session, f"http://127.0.0.1:{port}")
            for _ in range(args.workers):
                processes.append(
                    await asyncio.create_subprocess_exec(
                        LEADLINE, "worker", "--config", str(config), env=env, stdout=log, stderr=log
                    )
                )
            api_rate, e2e_rate, cpu_ms = await end_to_end(
                f"http://127.0.0.1:{port}",
                directory / "leadline.db",
                args.messages,
                args.concurrency,
                {("serve" if index == 0 else f"worker {index}"): p.pid for index, p in enumerate(processes)},
            )
        except BaseException:
            log.flush()
            print((directory / "leadline.log").read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            died = [p for p in processes if p.returncode is not None]
            for process in processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGINT)
            for process in processes:
                await process.wait()
            stub.terminate()
            stub.join()
            log.close()
            if died:
                print((directory / "leadline.log").read_text()[-6000:], file=sys.stderr)
                raise RuntimeError(f"{len(died)} leadline process(es) exited during the run")

    print(
        f"outbound, {args.messages} messages, {args.concurrency} in flight, {os.cpu_count()} cores, "
        f"{'no' if args.no_serve_worker else 'in-process'} worker + {args.workers} worker process(es), "
        f"batch {args.batch_size}, SQLite, rate limit off"
    )
    print(f"{'measure':<44}{'per second':>12}")
    print(f"{'stub ceiling (aiohttp client -> stub)':<44}{ceiling:>12,.0f}")
    print(f"{'POST /v1/messages answered 202':<44}{api_rate:>12,.0f}")
    print(f"{'end to end: accepted by the provider':<44}{e2e_rate:>12,.0f}")
    print(f"{'end to end / stub ceiling':<44}{e2e_rate / ceiling:>12.2f}")
    print(f"{'leadline CPU ms per message (all processes)':<44}{sum(cpu_ms.values()):>12.2f}")
    for name, ms in cpu_ms.items():
        print(f"{'  ' + name:<44}{ms:>12.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="extra `leadline worker` processes")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--no-serve-worker", action="store_true", help="sends only by the --workers processes, not by `leadline serve`"
    )
    asyncio.run(main(parser.parse_args()))
