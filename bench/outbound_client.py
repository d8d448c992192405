"""Outbound HTTP client throughput: aiohttp (what the provider adapters use) against httpx.AsyncClient.

Both clients POST a Meta-sized JSON send to the same minimal aiohttp stub, which runs in its own
process so that it does not share the event loop (or the GIL) with the client being measured. Each
client gets a warm-up, then ``--rounds`` timed rounds of ``--requests`` calls with ``--concurrency``
in flight; the best round counts, which keeps one noisy round from deciding.

    .venv/bin/python bench/outbound_client.py [--requests 3000] [--concurrency 100] [--rounds 2]

httpx is a dev dependency; the script needs the dev extras installed. The gap widens with concurrency:
httpx's connection pool contends at high concurrency (encode/httpx#3215), and its h11 parser is pure
Python where aiohttp's is C. With the defaults the run takes about 15-20 s, nearly all of it httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection

import aiohttp
import httpx
import orjson
from aiohttp import web

from leadline.providers.http import new_client_session

BODY = orjson.dumps(
    {"messaging_product": "whatsapp", "to": "5215512345678", "type": "text", "text": {"body": "Tu pedido sale hoy"}}
)
ANSWER = orjson.dumps(
    {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "5215512345678", "wa_id": "5215512345678"}],
        "messages": [{"id": "wamid.BENCH", "message_status": "accepted"}],
    }
)
HEADERS = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}


def _serve_stub(ready: Connection) -> None:
    async def messages(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v25.0/{phone_number_id}/messages", messages)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ready.send(sock.getsockname()[1])
    web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)


async def _run(call: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    """Requests per second for ``requests`` calls with ``concurrency`` in flight."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def _bench_aiohttp(url: str, requests: int, concurrency: int, rounds: int) -> float:
    session = new_client_session(timeout_seconds=10.0, limit=concurrency)

    async def call() -> None:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            await response.read()
            assert response.status == 200

    try:
        await _run(call, min(requests, 300), concurrency)
        return max([await _run(call, requests, concurrency) for _ in range(rounds)])
    finally:
        await session.close()


async def _bench_httpx(url: str, requests: int, concurrency: int, rounds: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:

        async def call() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            assert response.status_code == 200

        await _run(call, min(requests, 300), concurrency)
        return max([await _run(call, requests, concurrency) for _ in range(rounds)])


async def _main(requests: int, concurrency: int, rounds: int) -> None:
    receiving, sending = multiprocessing.Pipe(duplex=False)
    stub = multiprocessing.Process(target=_serve_stub, args=(sending,), daemon=True)
    stub.start()
    try:
        port = receiving.recv()
        url = f"http://127.0.0.1:{port}/v25.0/420000000000002/messages"
        # Wait until the stub answers, so that neither client pays for its start-up.
        async with aiohttp.ClientSession() as probe:
            for _ in range(100):
                try:
                    async with probe.post(url, data=BODY) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        aiohttp_rate = await _bench_aiohttp(url, requests, concurrency, rounds)
        httpx_rate = await _bench_httpx(url, requests, concurrency, rounds)
    finally:
        stub.terminate()
        stub.join(5)
    print(f"{requests} POSTs per round, {concurrency} in flight, best of {rounds} rounds")
    print(f"aiohttp {aiohttp.__version__:>8}: {aiohttp_rate:9.0f} requests/s")
    print(f"httpx   {httpx.__version__:>8}: {httpx_rate:9.0f} requests/s")
    print(f"aiohttp / httpx: {aiohttp_rate / httpx_rate:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(_main(args.requests, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
