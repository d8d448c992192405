"""Inbound webhook throughput: durable events/s and answer latency, against a bare endpoint baseline.

    .venv/bin/python bench/inbound.py [--requests 20000] [--concurrency 64] [--database-url URL]

Starts leadline (uvicorn, one process, SQLite file by default) in a subprocess with one extra route,
``POST /bench/bare``, that reads the body and answers 200 on the same server stack. A client process
posts correctly signed Meta text webhooks with unique message ids, first to the bare route, then to
``/webhooks/meta``; every 200 from the webhook means the event was committed. Then it offers a steady
500 events/s and reports the latency at that load. Bodies and signatures are built before the clock
starts, so the client's own work is not counted against the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import Request, Response

APP_SECRET = "bench-app-secret-000000000000000"
PHONE_NUMBER_ID = "420000000000002"


def bench_config(database_url: str) -> dict[str, object]:
    return {
        "database_url": database_url,
        "worker": {"enabled": True},
        "channels": [
            {
                "name": "bench-meta",
                "provider": "meta",
                "business_number": "+15550001234",
                "phone_number_id": PHONE_NUMBER_ID,
                "app_secret": APP_SECRET,
                "verify_token": "bench-verify-token",
            }
        ],
    }


def bench_app() -> Any:
    """leadline as configured for the bench, plus the bare endpoint (a uvicorn factory, one per process)."""
    from leadline.api.app import create_app
    from leadline.config import config_from_mapping

    app = create_app(config_from_mapping(bench_config(os.environ["BENCH_DATABASE_URL"])))

    @app.post("/bench/bare")
    async def bare(request: Request) -> Response:
        await request.body()
        return Response(status_code=200)

    return app


def serve(database_url: str, port: int, processes: int) -> None:
    import uvicorn

    os.environ["BENCH_DATABASE_URL"] = database_url
    sys.path.insert(0, str(Path(__file__).parent))
    uvicorn.run(
        "inbound:bench_app",
        factory=True,
        workers=processes,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
    )


def webhook_body(index: int, run: str) -> bytes:
    sender = f"52155{index % 100000:08d}"
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "310000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID},
                            "contacts": [{"profile": {"name": f"Lead {index}"}, "wa_id": sender}],
                            "messages": [
                                {
                                    "from": sender,
                                    "id": f"wamid.bench.{run}.{index}",
                                    "timestamp": str(1767225600 + index),
                                    "type": "text",
                                    "text": {"body": f"Hola, pregunta número {index}"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_requests(count: int, run: str) -> list[tuple[bytes, dict[str, str]]]:
    from leadline.providers.meta.signature import meta_signature

    requests = []
    for index in range(count):
        body = webhook_body(index, run)
        headers = {"content-type": "application/json", "x-hub-signature-256": meta_signature(APP_SECRET, body)}
        requests.append((body, headers))
    return requests


async def open_loop(url: str, requests: list[tuple[bytes, dict[str, str]]], rate: float) -> tuple[list[float], int]:
    """Offer ``rate`` requests/s whatever the answers' speed (so slow answers cannot hide as lower load)."""
    latencies: list[float] = []
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:

        async def one(body: bytes, headers: dict[str, str]) -> None:
            nonlocal failures
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for index, (body, headers) in enumerate(requests):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, headers)))
        await asyncio.gather(*tasks)
    return latencies, failures


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_up(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("leadline did not start")


async def count_messages(database_url: str) -> int:
    from sqlalchemy import func, select

    from leadline.store.db import Database
    from leadline.store.tables import messages

    db = Database(database_url)
    try:
        async with db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(messages))).scalar_one())
    finally:
        await db.close()


WRK_SCRIPT = """
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  requests = {}
  local threads = tonumber(args[2])
  local i = 0
  for line in io.lines(args[1]) do
    if i % threads == id then
      local signature, body = line:match("([^\t]+)\t(.*)")
      requests[#requests + 1] = wrk.format("POST", nil,
        {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = signature}, body)
    end
    i = i + 1
  end
  index = 0
end
function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end
"""


def run_wrk(url: str, request_file: Path, script: Path, args: argparse.Namespace) -> dict[str, float]:
    """wrk drives the load (a Python client would be the bottleneck); returns req/s, p50, p99, non-2xx."""
    output = subprocess.run(
        [
            "wrk",
            "-t",
            str(args.threads),
            "-c",
            str(args.concurrency),
            "-d",
            f"{args.seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            str(request_file),
            str(args.threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures = {"non_2xx": 0.0}
    for line in output.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            figures["rate"] = float(words[1])
        elif line.strip().startswith("50%"):
            figures["p50"] = _milliseconds(words[1])
        elif line.strip().startswith("99%"):
            figures["p99"] = _milliseconds(words[1])
        elif line.strip().startswith("Non-2xx"):
            figures["non_2xx"] = float(words[-1])
        elif "requests in" in line:
            figures["count"] = float(words[0])
    return figures


def _milliseconds(text: str) -> float:
    for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def write_requests(path: Path, count: int, run: str) -> None:
    with path.open("w") as out:
        for body, headers in signed_requests(count, run):
            out.write(f"{headers['x-hub-signature-256']}\t{body.decode()}\n")


def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench/inbound.py needs wrk (Debian: apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="leadline-bench-"))
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--database-url",
            database_url,
            "--processes",
            str(args.processes),
        ]
    )
    try:
        asyncio.run(wait_until_up(base))
        script = workdir / "signed.lua"
        script.write_text(WRK_SCRIPT)
        # Enough unique messages that wrk never repeats one at the rates this machine reaches.
        count = args.seconds * args.max_rate
        bare_file, durable_file = workdir / "bare.txt", workdir / "durable.txt"
        write_requests(bare_file, count, "bare")
        write_requests(durable_file, count, "durable")
        print(f"leadline ({args.processes} uvicorn process(es)) on {base}, database {database_url.split('@')[-1]}")
        print(f"wrk: {args.threads} threads, {args.concurrency} connections, {args.seconds} s per endpoint")

        bare = run_wrk(f"{base}/bench/bare", bare_file, script, args)
        before = asyncio.run(count_messages(database_url))
        durable = run_wrk(f"{base}/webhooks/meta", durable_file, script, args)
        stored = asyncio.run(count_messages(database_url)) - before

        steady_count = int(args.steady_rate * args.steady_seconds)
        steady_latencies, steady_failures = asyncio.run(
            open_loop(f"{base}/webhooks/meta", signed_requests(steady_count, "steady"), args.steady_rate)
        )

        print()
        print(f"{'endpoint':<36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
        for name, figures in (("bare (read body, answer 200)", bare), ("/webhooks/meta (durable)", durable)):
            print(
                f"{name:<36}{figures['rate']:>10.0f}{figures['p50']:>10.2f}{figures['p99']:>10.2f}"
                f"{figures['non_2xx']:>10.0f}"
            )
        print(
            f"{f'/webhooks/meta, {args.steady_rate:.0f}/s offered':<36}{'':>10}"
            f"{percentile(steady_latencies, 0.5):>10.2f}{percentile(steady_latencies, 0.99):>10.2f}"
            f"{steady_failures:>10}"
        )
        print()
        print(
            f"durable events/s: {durable['rate']:.0f} ({stored} new messages stored; wrk counted "
            f"{durable.get('count', 0):.0f} answers)"
        )
        print(f"durable / bare: {durable['rate'] / bare['rate']:.0%}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="per endpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-rate", type=int, default=15000, help="unique requests prepared per second of run")
    parser.add_argument("--steady-rate", type=float, default=500.0)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--processes", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve is not None:
        serve(arguments.database_url, arguments.serve, arguments.processes)
    else:
        main(arguments)
