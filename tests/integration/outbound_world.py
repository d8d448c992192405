"""What the outbound tests share: leadline's real HTTP server wired to the provider sandbox, a CRM receiver,
and a worker clock the test moves by hand.

leadline's socket is bound first, so the sandbox knows where to send its webhooks before leadline's
channels are pointed at the sandbox. The app runs without a worker: a test drains the job table with
:meth:`World.drain`, as many times and with as many worker ids as it needs, on a clock it controls.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import uvicorn
from aiohttp import web
from sqlalchemy import select

from conftest import API_KEY, base_config
from leadline.api.app import create_app
from leadline.bootstrap import Services
from leadline.config import LeadlineConfig, config_from_mapping
from leadline.pipeline.callbacks import SIGNATURE_HEADER, verify_callback
from leadline.pipeline.worker import Worker
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.server import RunningSandbox, start_sandbox
from leadline.store.tables import jobs, messages

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CUSTOMER = "+5215512345678"
CUSTOMER_DIGITS = "5215512345678"
CRM_SECRET = "crm-callback-secret-0123456789"
META_URL_PATH = "/meta/v25.0/420000000000002/messages"
TWILIO_URL_PATH = "/twilio/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json"


class TestClock:
    """The workers' clock: stands still unless advanced, and never runs behind the real time (the API
    stamps jobs with the real time, so a clock behind it would see nothing due)."""

    __test__ = False

    def __init__(self) -> None:
        self._now = datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def catch_up(self) -> datetime:
        self._now = max(self._now, datetime.now(UTC))
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now = self.catch_up() + timedelta(seconds=seconds)
        return self._now


@dataclass
class Callback:
    event_id: str
    signature: str
    body: bytes
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CrmReceiver:
    """A CRM's callback endpoint: keeps every POST and what it answered."""

    url: str = ""
    received: list[Callback] = field(default_factory=list)
    fail_first: int = 0
    """Answer 500 to this many callbacks, whatever they are, before answering 200."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event_id = request.headers.get("X-Leadline-Event-Id", "")
        status = 200
        if self.fail_first > 0:
            self.fail_first -= 1
            status = 500
        self.received.append(Callback(event_id, request.headers.get(SIGNATURE_HEADER, ""), body, status))
        return web.Response(status=status, text="ok" if status == 200 else "boom")

    def delivered(self) -> list[Callback]:
        return [c for c in self.received if c.answered == 200]

    def all_signed(self, secret: str = CRM_SECRET) -> bool:
        now = int(time.time())
        return all(verify_callback(secret, c.signature, c.body, now=now) for c in self.received)


async def serve_aiohttp(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@dataclass
class World:
    config: LeadlineConfig
    url: str
    services: Services
    sandbox: RunningSandbox
    crm: CrmReceiver
    http: aiohttp.ClientSession
    clock: TestClock

    # leadline ------------------------------------------------------------------------------

    async def post_message(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/v1/messages", json=body, headers={**AUTH, **(headers or {})}) as r:
            return r.status, await r.json()

    async def send(self, **body: Any) -> str:
        """POST /v1/messages, asserting 202; returns leadline's message id."""
        body.setdefault("to", CUSTOMER)
        status, answer = await self.post_message(body)
        assert status == 202, answer
        message_id: str = answer["id"]
        return message_id

    async def v1(self, path: str, **params: Any) -> Any:
        async with self.http.get(f"{self.url}/v1{path}", params=params, headers=AUTH) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def message(self, message_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.v1(f"/messages/{message_id}")
        return found

    async def timeline(self, lead_id: str) -> list[dict[str, Any]]:
        """Oldest first."""
        events: list[dict[str, Any]] = (await self.v1(f"/leads/{lead_id}/timeline", limit=200))["events"]
        return list(reversed(events))

    def worker(self, worker_id: str = "test-worker") -> Worker:
        return Worker(
            self.services.db,
            self.services.job_handlers,
            self.config.settings.worker,
            worker_id=worker_id,
            clock=self.clock.now,
        )

    async def drain(self, worker_id: str = "test-worker") -> int:
        """Run every job due on the test clock (brought up to the real time first)."""
        self.clock.catch_up()
        return await self.worker(worker_id).run_until_idle()

    async def job_rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(jobs).order_by(jobs.c.id)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        async with self.services.db.read() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def message_row(self, message_id: str) -> dict[str, Any]:
        async with self.services.db.read() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).one()
        return dict(row._mapping)

    # the sandbox ---------------------------------------------------------------------------

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.sandbox.url}/_sandbox{path}", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def provider_requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        """Sends the fake providers received, oldest first (mark-as-read, media and template calls left out)."""
        query = f"?provider={provider}" if provider else ""
        requests: list[dict[str, Any]] = (await self.control("GET", f"/requests{query}"))["requests"]
        return [
            r
            for r in requests
            if r["method"] == "POST"
            and r["path"].endswith(("/messages", "/Messages.json"))
            and '"status":"read"' not in r["body"]
        ]

    async def fault(self, **spec: Any) -> None:
        await self.control("POST", "/faults", spec)

    async def flush(self) -> dict[str, Any]:
        """Deliver every status callback the sandbox owes leadline; each is committed when this returns."""
        result: dict[str, Any] = await self.control("POST", "/statuses/flush")
        assert result["delivered"] == result["attempted"], result
        return result

    async def inbound(self, provider: str = "meta", text: str = "Hola", **spec: Any) -> dict[str, Any]:
        """A customer writes (a signed webhook to leadline, recorded when this returns)."""
        answer: dict[str, Any] = await self.control(
            "POST", "/inbound", {"provider": provider, "from": CUSTOMER, "text": text, **spec}
        )
        assert answer["leadline_status"] == 200, answer
        return answer


def sent_json(request: dict[str, Any]) -> Any:
    return json.loads(request["body"])


def sent_form(request: dict[str, Any]) -> list[tuple[str, str]]:
    return parse_qsl(request["body"], keep_blank_values=True)


def point_channels_at(data: dict[str, Any], sandbox: RunningSandbox, *, base: str | None = None) -> None:
    """Send through the sandbox (or through ``base``, a hop in front of it)."""
    for channel in data["channels"]:
        if channel["provider"] == "meta":
            channel["api_base_url"] = sandbox.meta_api_base_url.replace(sandbox.url, base or sandbox.url)
        else:
            channel["api_base_url"] = sandbox.twilio_api_base_url.replace(sandbox.url, base or sandbox.url)
            channel["content_api_base_url"] = sandbox.twilio_api_base_url


Tweak = Callable[[dict[str, Any], str], None]
"""Changes the configuration mapping before it is validated; gets the CRM receiver's URL."""


async def flushing_proxy(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> tuple[web.AppRunner, str]:
    """A hop between leadline and the sandbox that, once the fake provider has accepted a send and before
    passing its answer on, has the sandbox deliver the status callbacks it owes: leadline receives and
    commits a message's statuses before the answer that tells it the message's provider id."""

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with http.request(request.method, sandbox.url + request.path_qs, data=body, headers=headers) as answer:
            payload, status, content_type = await answer.read(), answer.status, answer.content_type
        async with http.post(f"{sandbox.url}/_sandbox/statuses/flush") as flushed:
            outcome = await flushed.json()
            assert outcome["delivered"] == outcome["attempted"], outcome
        return web.Response(status=status, body=payload, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    return await serve_aiohttp(app)


@asynccontextmanager
async def open_world(
    database_url: str, tweak: Tweak | None = None, *, statuses_before_answers: bool = False
) -> AsyncIterator[World]:
    """leadline, the sandbox and a CRM receiver. With ``statuses_before_answers`` leadline's channels go
    through :func:`flushing_proxy`."""
    crm = CrmReceiver()
    crm_app = web.Application()
    crm_app.router.add_post("/{tail:.*}", crm.handle)
    crm_runner, crm.url = await serve_aiohttp(crm_app)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    leadline_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    data = base_config(database_url)
    if tweak is not None:
        tweak(data, crm.url)
    sandbox = await start_sandbox(
        SandboxConfig.from_leadline(config_from_mapping(data), leadline_url, status_mode="manual")
    )
    http = aiohttp.ClientSession()
    proxy: web.AppRunner | None = None
    if statuses_before_answers:
        proxy, proxy_url = await flushing_proxy(sandbox, http)
        point_channels_at(data, sandbox, base=proxy_url)
    else:
        point_channels_at(data, sandbox)
    config = config_from_mapping(data)

    app = create_app(config, run_worker=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    services: Services = app.state.services
    try:
        yield World(config, leadline_url, services, sandbox, crm, http, TestClock())
    finally:
        server.should_exit = True
        await task
        sock.close()
        if proxy is not None:
            await proxy.cleanup()
        await http.close()
        await sandbox.close()
        await crm_runner.cleanup()


def with_subscriber(name: str = "crm", *, all_events: bool = True) -> Tweak:
    def tweak(data: dict[str, Any], crm_url: str) -> None:
        data.setdefault("subscribers", []).append(
            {"name": name, "url": f"{crm_url}/{name}", "secret": CRM_SECRET, "all_events": all_events}
        )

    return tweak


def with_worker(**settings: Any) -> Tweak:
    def tweak(data: dict[str, Any], crm_url: str) -> None:
        data["worker"] = {**data.get("worker", {}), **settings}

    return tweak


def combine(*tweaks: Tweak) -> Tweak:
    def tweak(data: dict[str, Any], crm_url: str) -> None:
        for each in tweaks:
            each(data, crm_url)

    return tweak
