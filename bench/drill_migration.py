"""The migration drill: a live channel moved from Meta to Twilio while leads keep writing.

    .venv/bin/python bench/drill_migration.py [--leads 200] [--ticks 120] [--database-url URL]

One process: leadline's real HTTP server (uvicorn) on SQLite (or ``--database-url``), the provider
sandbox (real HTTP, Meta and Twilio wire formats), two workers sending from the outbox.

1. Ready: a template approved on both channels, a test message received on the Twilio number;
   ``cutover plan --from meta --to twilio`` must be empty.
2. ``--leads`` leads write on the Meta number; leadline replies to each (POST /v1/messages). Their
   threads are open on Meta.
3. ``--ticks`` ticks of live traffic, a quarter of them before ``cutover start --from meta --to twilio``
   and the rest after, the start called while ticks are in flight: in each tick an old lead writes again
   on Meta, leadline replies to an old lead, a new lead writes on the Twilio number and is answered, and
   leadline opens a conversation (a template) with a number it has never seen.
4. The workers finish the outbox. Every message leadline accepted (202) is looked up in what the sandbox
   received, by a token unique to it: found once is delivered, never is lost, twice is duplicated;
   anything the sandbox received that leadline did not accept is duplicated too. Every customer message
   the sandbox sent is looked up in leadline's messages.
5. The drain: ``cutover status`` says when the last thread on Meta drains; the clock is moved there
   (``now`` passed to the cutover functions), status must show none left, the routing policy must send
   every old lead's next conversation to Twilio, and ``cutover finish`` must succeed without ``--force``.

Prints the table; ``tests/integration/test_migration_drill.py`` runs the same drill and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from sqlalchemy import select

from leadline.api.app import create_app
from leadline.bootstrap import Services
from leadline.config import LeadlineConfig, config_from_mapping
from leadline.domain.routing import decide_channel
from leadline.logging import configure_logging
from leadline.pipeline.worker import Worker
from leadline.routing.cutover import cutover_status, finish_cutover, plan, start_cutover
from leadline.routing.facts import routing_facts
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.server import RunningSandbox, start_sandbox
from leadline.store.tables import messages
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel

API_KEY = "drill-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OLD, NEW = "meta", "twilio"
TOKEN = re.compile(r"DRILL-\d{6}")
TEMPLATE: dict[str, Any] = {
    "name": "drill_welcome",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu folio es {{2}}.", "examples": ["Lucía", "DRILL-000000"]},
}


def drill_config(database_url: str, drain_age_hours: float = 24.0) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "public_url": "https://leadline.example.com",
        "default_channel": OLD,
        "api_keys": [{"name": "drill", "key": API_KEY}],
        "worker": {"poll_interval": 0.05, "batch_size": 50},
        "routing": {"drain_age_hours": drain_age_hours},
        "channels": [
            {
                "name": OLD,
                "provider": "meta",
                "business_number": "+15550001234",
                "phone_number_id": "420000000000002",
                "waba_id": "310000000000001",
                "app_secret": "drill-meta-app-secret-0001",
                "verify_token": "drill-verify-token",
                "access_token": "drill-meta-access-token",
                "rate_limit_per_second": 0,
            },
            {
                "name": NEW,
                "provider": "twilio",
                "business_number": "+15550005678",
                "account_sid": "AC00000000000000000000000000000777",
                "auth_token": "drill0000000000000000000000000777",
                "rate_limit_per_second": 0,
            },
        ],
    }


# --------------------------------------------------------------------------------------------
# What happened


@dataclass
class Sent:
    """A message leadline accepted (202), and what it was for."""

    message_id: str
    token: str
    to: str
    purpose: str
    """``old_reply`` (a thread open on Meta), ``new_conversation``, ``twilio_reply``."""
    requested_at: float
    answered_at: float


@dataclass
class Injected:
    provider: str
    message_id: str
    number: str


@dataclass
class Report:
    leads: int
    ticks: int
    accepted: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    inbound_injected: int = 0
    inbound_lost: list[str] = field(default_factory=list)
    traffic: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per channel: ``in`` and ``out`` as leadline recorded them, ``provider`` as the sandbox received them."""
    old_replies_off_meta: list[str] = field(default_factory=list)
    new_after_start_off_twilio: list[str] = field(default_factory=list)
    new_before_start_off_meta: list[str] = field(default_factory=list)
    new_before_start: int = 0
    new_during_switch: int = 0
    twilio_replies_off_twilio: list[str] = field(default_factory=list)
    new_after_start: int = 0
    old_replies: int = 0
    start_seconds: float = 0.0
    first_new_on_twilio_seconds: float | None = None
    first_new_routed_to_twilio_seconds: float | None = None
    draining_at_start: int = 0
    draining_after_traffic: int = 0
    time_to_drained: timedelta | None = None
    draining_at_drain_time: int = -1
    old_leads_routed_to_twilio_after_drain: int = 0
    finished_without_force: bool = False
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.inbound_lost
            or self.old_replies_off_meta
            or self.new_after_start_off_twilio
            or self.new_before_start_off_meta
            or self.twilio_replies_off_twilio
            or self.draining_at_drain_time != 0
            or self.old_leads_routed_to_twilio_after_drain != self.leads
            or not self.finished_without_force
        )


# --------------------------------------------------------------------------------------------
# The drill


class Drill:
    def __init__(self, config: LeadlineConfig, url: str, services: Services, sandbox: RunningSandbox) -> None:
        self.config = config
        self.url = url
        self.services = services
        self.sandbox = sandbox
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self.sent: list[Sent] = []
        self.injected: list[Injected] = []
        self._tokens = iter(range(1, 1_000_000))
        self._gate = asyncio.Semaphore(24)

    def token(self) -> str:
        return f"DRILL-{next(self._tokens):06d}"

    async def close(self) -> None:
        await self.http.close()

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.sandbox.url}/_sandbox{path}", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def customer_writes(self, provider: str, number: str, text: str) -> None:
        async with self._gate:
            answer = await self.control("POST", "/inbound", {"provider": provider, "from": number, "text": text})
        if answer["leadline_status"] != 200:
            raise RuntimeError(f"leadline answered {answer['leadline_status']} to an inbound webhook: {answer}")
        self.injected.append(Injected(provider, answer["message_id"], number))

    async def send(self, purpose: str, to: str, *, template: bool = False) -> Sent:
        token = self.token()
        if template:
            body: dict[str, Any] = {
                "to": to,
                "template": {"name": TEMPLATE["name"], "language": TEMPLATE["language"], "variables": ["Ana", token]},
            }
        else:
            body = {"to": to, "text": f"Gracias por escribir ({token})"}
        async with self._gate:
            requested = time.time()
            async with self.http.post(f"{self.url}/v1/messages", json=body, headers=AUTH) as response:
                answer = await response.json()
                if response.status != 202:
                    raise RuntimeError(f"POST /v1/messages answered {response.status}: {answer}")
            sent = Sent(answer["id"], token, to, purpose, requested, time.time())
        self.sent.append(sent)
        return sent


async def _prepare(drill: Drill) -> None:
    db, config = drill.services.db, drill.config
    await drill.control("POST", "/templates/settings", {"delay": None})
    await define_templates(db, [SourcedDefinition(TemplateDefinition.model_validate(TEMPLATE), "drill")])
    for name in (OLD, NEW):
        await submit_templates(db, config.channel(name))
    await drill.control("POST", "/templates/decide", {})
    for name in (OLD, NEW):
        await sync_channel(db, config.channel(name))
    await drill.customer_writes("twilio", "+5215500000000", "test message after pointing the webhook")
    async with db.read() as conn:
        blockers = await plan(conn, config, OLD, NEW)
    if blockers:
        raise RuntimeError("the plan is not empty: " + "; ".join(b.message for b in blockers))


def _old(i: int) -> str:
    return f"+52155{1000000 + i:07d}"


def _new_inbound(i: int) -> str:
    return f"+52156{1000000 + i:07d}"


def _new_outbound(i: int) -> str:
    return f"+52157{1000000 + i:07d}"


async def run_drill(database_url: str, *, leads: int = 200, ticks: int = 120, drain_age_hours: float = 24.0) -> Report:
    """Run the whole drill against ``database_url`` (migrated by leadline at start) and report on it."""
    wall = time.monotonic()
    report = Report(leads=leads, ticks=ticks)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    data = drill_config(database_url, drain_age_hours)
    sandbox = await start_sandbox(SandboxConfig.from_leadline(config_from_mapping(data), url, status_mode="manual"))
    data["channels"][0]["api_base_url"] = sandbox.meta_api_base_url
    data["channels"][1]["api_base_url"] = sandbox.twilio_api_base_url
    data["channels"][1]["content_api_base_url"] = sandbox.twilio_api_base_url
    config = config_from_mapping(data)
    app = create_app(config, run_worker=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.005)
    services: Services = app.state.services
    drill = Drill(config, url, services, sandbox)
    stop = asyncio.Event()
    workers = [
        Worker(services.db, services.job_handlers, config.settings.worker, worker_id=f"drill-worker-{n}")
        for n in (1, 2)
    ]
    running = [asyncio.create_task(w.run_forever(stop)) for w in workers]
    try:
        await _prepare(drill)
        called, returned = await _traffic(drill, report, leads, ticks)
        stop.set()
        await asyncio.gather(*running)
        while await workers[0].run_until_idle():
            pass
        old_leads = await _account(drill, report, called, returned)
        await _drain(drill, report, old_leads)
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        await drill.close()
        server.should_exit = True
        await serving
        sock.close()
        await sandbox.close()
    report.wall_seconds = time.monotonic() - wall
    return report


async def _traffic(drill: Drill, report: Report, leads: int, ticks: int) -> tuple[float, float]:
    """Returns when ``cutover start`` was called and when it returned (wall clock, as the sandbox stamps)."""
    # Old leads write on Meta and are answered there: their threads are open on Meta.
    await asyncio.gather(*(drill.customer_writes("meta", _old(i), "Hola, ¿tienen envío gratis?") for i in range(leads)))
    await asyncio.gather(*(drill.send("old_reply", _old(i)) for i in range(leads)))

    async def tick(i: int) -> None:
        old = _old(i % leads)
        await asyncio.gather(
            drill.customer_writes("meta", old, f"¿Y para mañana? ({i})"),
            drill.customer_writes("twilio", _new_inbound(i), "Hola, vi su anuncio"),
            drill.send("new_conversation", _new_outbound(i), template=True),
        )
        await asyncio.gather(drill.send("old_reply", old), drill.send("twilio_reply", _new_inbound(i)))

    # An eighth of the ticks run before the cutover, an eighth are in flight when it starts, the rest follow.
    quiet, switch = ticks // 8, ticks // 4
    await asyncio.gather(*(tick(i) for i in range(quiet)))
    in_flight = [asyncio.create_task(tick(i)) for i in range(quiet, switch)]
    started_at = time.time()
    started = await start_cutover(drill.services.db, drill.config, OLD, NEW, actor="drill", now=datetime.now(UTC))
    start_returned = time.time()
    report.start_seconds = start_returned - started_at
    report.draining_at_start = started.draining.count
    await asyncio.gather(*in_flight, *(tick(i) for i in range(switch, ticks)))
    return started_at, start_returned


async def _account(drill: Drill, report: Report, called: float, returned: float) -> dict[str, str]:
    """Correlates what leadline accepted with what the providers received; returns old leads' ids by number."""
    requests = (await drill.control("GET", "/requests"))["requests"]
    sends = [
        r
        for r in requests
        if r["method"] == "POST"
        and r["path"].endswith(("/messages", "/Messages.json"))
        and '"status":"read"' not in r["body"]
    ]
    seen: Counter[tuple[str, str]] = Counter()
    first_seen: dict[str, float] = {}
    for request in sends:
        for token in set(TOKEN.findall(request["body"])):
            seen[(token, request["provider"])] += 1
            first_seen.setdefault(token, request["received_at"])
    async with drill.services.db.read() as conn:
        rows = {
            row.id: row
            for row in await conn.execute(
                select(messages.c.id, messages.c.lead_id, messages.c.channel, messages.c.provider, messages.c.status)
            )
        }
        stored_inbound = Counter(
            row.provider_message_id
            for row in await conn.execute(select(messages.c.provider_message_id).where(messages.c.direction == "in"))
        )
        channels = await conn.execute(select(messages.c.channel, messages.c.direction))
        for channel, direction in channels:
            report.traffic.setdefault(channel, {"in": 0, "out": 0, "provider": 0})[direction] += 1
    for (_, provider), count in seen.items():
        channel = OLD if provider == "meta" else NEW
        report.traffic.setdefault(channel, {"in": 0, "out": 0, "provider": 0})["provider"] += count

    accepted_tokens = set()
    report.accepted = len(drill.sent)
    for sent in drill.sent:
        accepted_tokens.add(sent.token)
        row = rows.get(sent.message_id)
        if row is None:
            report.lost.append(f"{sent.message_id}: accepted but not stored")
            continue
        on_right = seen[(sent.token, row.provider)]
        on_any = sum(count for (token, _), count in seen.items() if token == sent.token)
        if on_right == 0 or row.status in ("failed", "queued"):
            report.lost.append(f"{sent.message_id} ({row.channel}, {row.status}): never reached {row.provider}")
        elif on_any > 1:
            report.duplicated.append(f"{sent.message_id}: reached the providers {on_any} times")
        else:
            report.delivered += 1
        if sent.purpose == "old_reply":
            report.old_replies += 1
            if row.channel != OLD:
                report.old_replies_off_meta.append(sent.message_id)
        elif sent.purpose == "twilio_reply" and row.channel != NEW:
            report.twilio_replies_off_twilio.append(sent.message_id)
        elif sent.purpose == "new_conversation":
            if row.channel == NEW:
                routed = sent.answered_at - called
                if (
                    report.first_new_routed_to_twilio_seconds is None
                    or routed < report.first_new_routed_to_twilio_seconds
                ):
                    report.first_new_routed_to_twilio_seconds = routed
                if sent.token in first_seen:
                    reached = first_seen[sent.token] - called
                    if report.first_new_on_twilio_seconds is None or reached < report.first_new_on_twilio_seconds:
                        report.first_new_on_twilio_seconds = reached
            if sent.requested_at >= returned:
                report.new_after_start += 1
                if row.channel != NEW:
                    report.new_after_start_off_twilio.append(sent.message_id)
            elif sent.answered_at <= called:
                report.new_before_start += 1
                if row.channel != OLD:
                    report.new_before_start_off_meta.append(sent.message_id)
            else:
                report.new_during_switch += 1
    phantoms = {token for token, _ in seen} - accepted_tokens
    report.duplicated += [f"{token}: received by a provider, never accepted by leadline" for token in phantoms]

    old_leads = {
        s.to: rows[s.message_id].lead_id for s in drill.sent if s.purpose == "old_reply" and s.message_id in rows
    }
    report.inbound_injected = len(drill.injected)
    for injected in drill.injected:
        if stored_inbound[injected.message_id] != 1:
            count = stored_inbound[injected.message_id]
            report.inbound_lost.append(f"{injected.message_id} from {injected.number}: stored {count} times")
    return old_leads


async def _drain(drill: Drill, report: Report, old_leads: dict[str, str]) -> None:
    db, config = drill.services.db, drill.config
    async with db.read() as conn:
        status = await cutover_status(conn, config, now=datetime.now(UTC))
    report.draining_after_traffic = status.draining.count
    drains_at = status.draining.drains_at
    assert drains_at is not None and status.started_at is not None
    report.time_to_drained = drains_at - status.started_at
    async with db.read() as conn:
        report.draining_at_drain_time = (await cutover_status(conn, config, now=drains_at)).draining.count
        for number, lead_id in old_leads.items():
            facts = await routing_facts(conn, config, lead_id, drains_at)
            decision = decide_channel(
                to=number,
                channels=facts.channels,
                explicit=None,
                threads=facts.threads,
                flags=facts.flags,
                drain_age=facts.drain_age,
                now=drains_at,
            )
            if decision.channel == NEW:
                report.old_leads_routed_to_twilio_after_drain += 1
    async with db.transaction() as conn:
        finished = await finish_cutover(conn, config, actor="drill", now=drains_at)
    report.finished_without_force = finished.draining.count == 0


# --------------------------------------------------------------------------------------------
# The table


def render(report: Report) -> str:
    def span(value: timedelta | None) -> str:
        if value is None:
            return "-"
        minutes = int(value.total_seconds() // 60)
        return f"{minutes // 60}h {minutes % 60:02d}m"

    first = report.first_new_on_twilio_seconds
    routed = report.first_new_routed_to_twilio_seconds
    rows = [
        ("accepted by leadline (202)", str(report.accepted)),
        ("reached a provider exactly once", str(report.delivered)),
        ("lost", str(len(report.lost))),
        ("duplicated", str(len(report.duplicated))),
        ("customer messages sent / not stored once", f"{report.inbound_injected} / {len(report.inbound_lost)}"),
        (f"replies to old leads not on {OLD}", f"{len(report.old_replies_off_meta)} of {report.old_replies}"),
        (
            "new conversations: before / during / after start",
            f"{report.new_before_start} / {report.new_during_switch} / {report.new_after_start}",
        ),
        (f"  before start not on {OLD}", str(len(report.new_before_start_off_meta))),
        (f"  after start not on {NEW}", str(len(report.new_after_start_off_twilio))),
        (f"replies to leads who wrote on {NEW} not on {NEW}", str(len(report.twilio_replies_off_twilio))),
        ("cutover start took", f"{report.start_seconds * 1000:.0f} ms"),
        (
            f"first new conversation accepted for {NEW}",
            f"{routed * 1000:.0f} ms after start" if routed is not None else "-",
        ),
        (
            f"first new conversation received by {NEW}",
            f"{first * 1000:.0f} ms after start" if first is not None else "-",
        ),
        (
            f"threads draining on {OLD}: at start / after traffic",
            f"{report.draining_at_start} / {report.draining_after_traffic}",
        ),
        ("time to drained (cutover status)", f"{span(report.time_to_drained)} after start"),
        ("draining then (clock moved there)", str(report.draining_at_drain_time)),
        (f"old leads routed to {NEW} then", f"{report.old_leads_routed_to_twilio_after_drain} of {report.leads}"),
        ("cutover finish without --force then", "yes" if report.finished_without_force else "no"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [
        f"migration drill: {report.leads} leads with threads open on {OLD}, {report.ticks} ticks of live traffic, "
        f"cutover {OLD} -> {NEW} an eighth of the way in, an eighth more in flight; {report.wall_seconds:.1f} s",
        "",
        f"{'channel':<10}{'in':>8}{'out':>8}{'received by the provider':>27}",
    ]
    for channel in (OLD, NEW):
        counts = report.traffic.get(channel, {"in": 0, "out": 0, "provider": 0})
        lines.append(f"{channel:<10}{counts['in']:>8}{counts['out']:>8}{counts['provider']:>27}")
    lines.append("")
    lines += [f"{label:<{width}}{value}" for label, value in rows]
    lines += ["", "OK" if report.ok else "FAILED"]
    lines += [f"  {problem}" for problem in (report.lost + report.duplicated + report.inbound_lost)[:10]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=120)
    parser.add_argument("--drain-age-hours", type=float, default=24.0)
    parser.add_argument("--database-url", help="default: a new SQLite file in a temporary folder")
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(folder) / 'drill.db'}"
        report = asyncio.run(run_drill(url, leads=args.leads, ticks=args.ticks, drain_age_hours=args.drain_age_hours))
    print(render(report))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
