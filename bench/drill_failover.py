"""Failover drill: Meta's account goes dark mid-run (every send answered 131042, payment problem), then
comes back. Nothing accepted may be lost or sent twice; movable messages must flow through Twilio at once.

Two processes: this script, which runs the provider sandbox (Meta and Twilio, statuses delivered by
themselves) and the load, and ``leadline serve`` (uvicorn, SQLite, its in-process worker) pointed at the
sandbox, with ``probe_after_seconds = 5`` and ``free_form_on_failover = "hold"``.

    .venv/bin/python bench/drill_failover.py [--leads 30] [--rate 4] [--burst 4] [--fault-at 6] [--recover-at 14]
                                             [--stop-at 22]

The load, ``--rate`` bursts a second of ``--burst`` concurrent operations, alternates: one of ``--leads``
customers writes on Meta and the CRM answers in free text (their window is open on Meta only), and a
template goes to a new number (movable: approved on both channels). Every outbound body carries a tag
(``DRL<n>Z``) that the sandbox's request log is searched for. At ``--fault-at`` seconds the sandbox's
Meta starts refusing every send with 131042; at ``--recover-at`` it stops; at ``--stop-at`` the load
stops, and the drill waits until nothing is queued or held and the circuit has closed (at most ~60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from leadline.config import load_config
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.core import FaultSpec, RecordedRequest
from leadline.sandbox.server import RunningSandbox, start_sandbox
from leadline.store.db import Database
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel

API_KEY = "drill-api-key-0123456789abcdef"
LEADLINE = str(Path(sys.executable).parent / "leadline")
TAG = re.compile(r"DRL(\d+)Z")
SENT_OR_LATER = ("accepted", "sending", "sent", "delivered", "read")
ORDER_UPDATE: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(directory: Path, sandbox_url: str | None) -> Path:
    meta_base = f'api_base_url = "{sandbox_url}/meta/v25.0"' if sandbox_url else ""
    twilio_base = (
        f'api_base_url = "{sandbox_url}/twilio"\ncontent_api_base_url = "{sandbox_url}/twilio"' if sandbox_url else ""
    )
    path = directory / "leadline.toml"
    path.write_text(
        f"""
database_url = "sqlite+aiosqlite:///{directory}/leadline.db"
public_url = "https://leadline.example.com"
log_level = "warning"
default_channel = "meta-main"
api_keys = [{{ name = "drill", key = "{API_KEY}" }}]

[worker]
poll_interval = 0.05

[routing]
failure_threshold = 3
probe_after_seconds = 5
free_form_on_failover = "hold"

[media]
storage_dir = "{directory}/media"

[[channels]]
name = "meta-main"
provider = "meta"
business_number = "+15550001234"
phone_number_id = "420000000000002"
waba_id = "310000000000001"
app_secret = "drill-app-secret"
verify_token = "drill-verify"
access_token = "drill-token"
rate_limit_per_second = 0
{meta_base}

[[channels]]
name = "twilio-main"
provider = "twilio"
business_number = "+15550001234"
account_sid = "AC00000000000000000000000000000001"
auth_token = "12345678901234567890123456789012"
rate_limit_per_second = 0
{twilio_base}
""",
        encoding="utf-8",
    )
    return path


async def approve_templates(config_path: Path, sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    config = load_config(config_path)
    async with http.post(f"{sandbox.url}/_sandbox/templates/settings", json={"delay": None}) as response:
        assert response.status == 200, await response.text()
    db = Database(config.settings.database_url)
    try:
        await db.migrate()
        definition = TemplateDefinition.model_validate(ORDER_UPDATE)
        await define_templates(db, [SourcedDefinition(definition, "drill")])
        for channel in config.channels:
            await submit_templates(db, channel)
        async with http.post(f"{sandbox.url}/_sandbox/templates/decide", json={}) as response:
            assert response.status == 200, await response.text()
        for channel in config.channels:
            await sync_channel(db, channel)
    finally:
        await db.close()


# --------------------------------------------------------------------------------------------
# The load


@dataclass
class Sent:
    message_id: str
    tag: int
    kind: str
    accepted_at: float


@dataclass
class Drill:
    url: str
    sandbox: RunningSandbox
    http: aiohttp.ClientSession
    leads: list[str]
    accepted: list[Sent] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    tags: int = 0
    fault_seq: int | None = None
    fault_at: float | None = None
    clear_seq: int | None = None
    recovered_at: float | None = None
    peak_held: int = 0
    """The most messages ``GET /v1/held`` listed at once during the run."""

    async def inbound(self, number: str, text: str) -> None:
        body = {"provider": "meta", "from": number, "text": text}
        async with self.http.post(f"{self.sandbox.url}/_sandbox/inbound", json=body) as response:
            answer = await response.json()
            assert response.status == 200 and answer["leadline_status"] == 200, answer

    async def post(self, body: dict[str, Any], kind: str) -> None:
        self.tags += 1
        tag = self.tags
        body = json.loads(json.dumps(body).replace("{tag}", f"DRL{tag}Z"))
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with self.http.post(f"{self.url}/v1/messages", json=body, headers=headers) as response:
            answer = await response.json()
        if response.status == 202:
            self.accepted.append(Sent(answer["id"], tag, kind, time.time()))
        elif response.status == 422:
            self.refused[answer["error"]["code"]] += 1
        else:
            raise RuntimeError(f"POST /v1/messages answered {response.status}: {answer}")

    async def operation(self, index: int) -> None:
        if index % 2 == 0:
            number = self.leads[(index // 2) % len(self.leads)]
            await self.inbound(number, f"¿Dónde va mi pedido? ({index})")
            await self.post({"to": number, "text": "Tu pedido {tag} sale hoy"}, "text")
        else:
            number = f"+52156{index:08d}"
            template = {"name": "order_update", "language": "es_MX", "variables": ["Cliente", "{tag}"]}
            await self.post({"to": number, "template": template}, "template")

    async def count_held(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with self.http.get(f"{self.url}/v1/held", headers=headers) as response:
            listed = len((await response.json())["messages"])
        self.peak_held = max(self.peak_held, listed)

    def last_seq(self) -> int:
        requests = self.sandbox.sandbox.requests
        return requests[-1].seq if requests else 0


async def wait_until_up(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        try:
            async with http.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("leadline did not start")


def query(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql).fetchall()


def settled(db_path: Path) -> bool:
    """Nothing queued or held, and Meta's circuit closed."""
    waiting = query(db_path, "SELECT count(*) FROM messages WHERE direction = 'out' AND status IN ('queued', 'held')")
    circuit = query(db_path, "SELECT state FROM channel_health WHERE channel = 'meta-main'")
    return waiting[0][0] == 0 and (not circuit or circuit[0][0] != "open")


async def run(drill: Drill, args: argparse.Namespace, db_path: Path, started: float) -> bool:
    for number in drill.leads:  # every lead's window opens on Meta before the clock starts
        await drill.inbound(number, "Hola")
    t0 = time.monotonic()
    index = 0
    while (elapsed := time.monotonic() - t0) < args.stop_at:
        if drill.fault_at is None and elapsed >= args.fault_at:
            drill.fault_seq = drill.last_seq()
            drill.sandbox.sandbox.set_fault(FaultSpec(provider="meta", mode="error", code=131042, http_status=400))
            drill.fault_at = time.time()
        if drill.recovered_at is None and elapsed >= args.recover_at:
            drill.sandbox.sandbox.faults.clear()
            drill.clear_seq = drill.last_seq()
            drill.recovered_at = time.time()
        # A burst at a time, concurrently: some sends are queued or in flight when Meta goes dark.
        await asyncio.gather(*(drill.operation(index * args.burst + i) for i in range(args.burst)))
        if drill.fault_at is not None:
            await drill.count_held()
        index += 1
        await asyncio.sleep(max(0.0, t0 + index / args.rate - time.monotonic()))
    deadline = started + 58
    while time.monotonic() < deadline:
        if settled(db_path):
            return True
        await asyncio.sleep(0.1)
    return False


# --------------------------------------------------------------------------------------------
# The figures


def is_send(request: RecordedRequest) -> bool:
    return (
        request.method == "POST"
        and request.path.endswith(("/messages", "/Messages.json"))
        and '"status":"read"' not in request.body
    )


async def metric_samples(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, float]:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            samples[labels] = float(value)
    return samples


def report(drill: Drill, db_path: Path, settled_in_time: bool, metrics: dict[str, dict[str, float]]) -> None:
    assert drill.fault_seq is not None and drill.clear_seq is not None
    assert drill.fault_at is not None and drill.recovered_at is not None
    sends = [r for r in drill.sandbox.sandbox.requests if is_send(r)]
    failed_attempt = {
        r.seq for r in sends if r.provider == "meta" and drill.fault_seq < r.seq <= drill.clear_seq
    }  # recorded while the fault was set: each was answered 131042
    delivered: dict[int, list[RecordedRequest]] = defaultdict(list)
    for r in sends:
        match = TAG.search(r.body)
        if match and r.seq not in failed_attempt:
            delivered[int(match.group(1))].append(r)

    rows = {
        r[0]: r[1:]
        for r in query(
            db_path,
            "SELECT id, channel, status, error_code, content FROM messages WHERE direction = 'out'",
        )
    }
    inbound = Counter(c for (c,) in query(db_path, "SELECT channel FROM messages WHERE direction = 'in'"))
    out_db = Counter(rows[s.message_id][0] for s in drill.accepted if rows[s.message_id][1] in SENT_OR_LATER)
    out_sandbox = Counter({"meta": 0, "twilio": 0})
    out_sandbox.update(rs[0].provider for rs in delivered.values())

    lost, failed, held_now, unseen = [], [], [], []
    for s in drill.accepted:
        channel, status, error_code, _ = rows[s.message_id]
        if status in SENT_OR_LATER:
            if not delivered.get(s.tag):
                unseen.append(s)
        elif status == "failed" and error_code:
            failed.append(s)
        elif status == "held":
            held_now.append(s)
        else:
            lost.append(s)
    duplicated = [tag for tag, rs in delivered.items() if len(rs) > 1]

    first_error = min((r.received_at for r in sends if r.seq in failed_attempt), default=None)
    first_twilio = min(
        (r.received_at for r in sends if r.provider == "twilio" and r.seq not in failed_attempt), default=None
    )
    circuit = query(db_path, "SELECT state FROM channel_health WHERE channel = 'meta-main'")

    contents = {s.tag: json.loads(rows[s.message_id][3]) for s in drill.accepted}
    ever_held = [s for s in drill.accepted if "held" in contents[s.tag]]
    held_sent = [delivered[s.tag][0].received_at for s in ever_held if delivered.get(s.tag)]
    movable = [
        s for s in drill.accepted if s.kind == "template" and drill.fault_at <= s.accepted_at < drill.recovered_at
    ]
    movable_via_twilio = [s for s in movable if delivered.get(s.tag) and delivered[s.tag][0].provider == "twilio"]
    slowest_move = max(
        (delivered[s.tag][0].received_at - s.accepted_at for s in movable_via_twilio), default=float("nan")
    )
    meta_queued_at_fault = [s for s in drill.accepted if contents[s.tag].get("failovers") and s.kind == "template"]

    def line(label: str, value: object) -> None:
        print(f"  {label:<58}{value!s:>14}")

    print(
        f"failover drill: {len(drill.leads)} leads, {drill.tags} sends offered, Meta down "
        f"{drill.recovered_at - drill.fault_at:.1f} s (131042), SQLite, 1 leadline process"
    )
    print(f"  {'channel':<24}{'in (webhooks)':>16}{'out (provider)':>16}{'out (leadline)':>16}")
    for channel, provider in (("meta-main", "meta"), ("twilio-main", "twilio")):
        print(f"  {channel:<24}{inbound[channel]:>16}{out_sandbox[provider]:>16}{out_db[channel]:>16}")
    line("accepted by the API (202)", len(drill.accepted))
    line("refused by the API (not accepted): " + (", ".join(drill.refused) or "-"), sum(drill.refused.values()))
    line("sent (accepted by a provider)", len(drill.accepted) - len(failed) - len(held_now) - len(lost))
    line("failed with a reason", len(failed))
    line("held at the end (listed)", len(held_now))
    line("LOST (accepted, then neither sent, failed nor held)", len(lost))
    line("DUPLICATED (one message accepted twice by providers)", len(duplicated))
    line("sent per leadline but never seen by the provider", len(unseen))
    line("Meta send attempts answered 131042", len(failed_attempt))
    if first_error is not None and first_twilio is not None:
        line("first 131042 → first send via Twilio (s)", f"{first_twilio - first_error:.2f}")
    line("templates moved off Meta after a failed or skipped send", len(meta_queued_at_fault))
    line("templates accepted while Meta was down", len(movable))
    line("  of which sent via Twilio", len(movable_via_twilio))
    line("  slowest accepted → sent via Twilio (s)", f"{slowest_move:.2f}")
    line("free-form replies held (Meta-only window)", len(ever_held))
    line("  most listed at once by GET /v1/held", drill.peak_held)
    if held_sent:
        line("recovery → last held message sent (s)", f"{max(held_sent) - drill.recovered_at:.2f}")
    line("circuit openings / closings (meta-main)", _openings(metrics))
    line("failovers meta-main → twilio-main", _failovers(metrics))
    line("Meta circuit at the end", circuit[0][0] if circuit else "never opened")
    line("settled (nothing queued or held, circuit closed)", "yes" if settled_in_time else "NO")


def _openings(metrics: dict[str, dict[str, float]]) -> str:
    opened = sum(v for k, v in metrics["leadline_circuit_openings_total"].items() if "meta-main" in k)
    closed = sum(v for k, v in metrics["leadline_circuit_closings_total"].items() if "meta-main" in k)
    return f"{opened:.0f} / {closed:.0f}"


def _failovers(metrics: dict[str, dict[str, float]]) -> str:
    return f"{sum(metrics['leadline_failovers_total'].values()):.0f}"


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leadline-drill-") as tmp:
        directory = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        sandbox = await start_sandbox(SandboxConfig.from_leadline(load_config(write_config(directory, None)), url))
        config_path = write_config(directory, sandbox.url)
        log = (directory / "leadline.log").open("wb")
        process = None
        async with aiohttp.ClientSession() as http:
            try:
                await approve_templates(config_path, sandbox, http)
                process = await asyncio.create_subprocess_exec(
                    LEADLINE,
                    "serve",
                    "--config",
                    str(config_path),
                    "--port",
                    str(port),
                    env={**os.environ, "LEADLINE_CONFIG": str(config_path)},
                    stdout=log,
                    stderr=log,
                )
                await wait_until_up(http, url)
                leads = [f"+52155{i:08d}" for i in range(args.leads)]
                drill = Drill(url, sandbox, http, leads)
                settled_in_time = await run(drill, args, directory / "leadline.db", started)
                metrics = {
                    name: await metric_samples(http, url, name)
                    for name in (
                        "leadline_circuit_openings_total",
                        "leadline_circuit_closings_total",
                        "leadline_failovers_total",
                    )
                }
            except BaseException:
                log.flush()
                print((directory / "leadline.log").read_text()[-6000:], file=sys.stderr)
                raise
            finally:
                if process is not None:
                    process.send_signal(signal.SIGINT)
                    await process.wait()
                await sandbox.close()
                log.close()
            report(drill, directory / "leadline.db", settled_in_time, metrics)
    print(f"  (drill took {time.monotonic() - started:.1f} s)")
    return 0 if settled_in_time else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=30)
    parser.add_argument("--rate", type=float, default=4.0, help="bursts per second")
    parser.add_argument("--burst", type=int, default=4, help="operations per burst, run concurrently")
    parser.add_argument("--fault-at", type=float, default=6.0)
    parser.add_argument("--recover-at", type=float, default=14.0)
    parser.add_argument("--stop-at", type=float, default=22.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
