"""Routing flags changed at runtime through /v1/routing and ``leadline routing``, on SQLite and PostgreSQL:
every change audited (who, when, before, after), bad input refused, a change on one server process used
by the very next decision of another, and flags (and circuits) kept across a restart."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from conftest import API_KEY, base_config, running_app
from leadline.cli import app as cli
from leadline.config import config_from_mapping
from leadline.domain.routing import rollout_bucket
from leadline.store.tables import channel_health

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LUCIA = "+5215512345678"
PEDRO = "+34600111222"


async def call(http: httpx.AsyncClient, base: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return await http.request(method, f"{base}/v1/routing{path}", json=body, headers=AUTH)


async def ok(http: httpx.AsyncClient, base: str, method: str, path: str, body: Any = None) -> Any:
    response = await call(http, base, method, path, body)
    assert response.status_code == 200, response.text
    return response.json()


async def decision(http: httpx.AsyncClient, base: str, to: str) -> tuple[str, str]:
    answer = await ok(http, base, "POST", "/explain", {"to": to})
    return answer["channel"], answer["reason"]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


# --------------------------------------------------------------------------------------------
# Changes through the API


async def test_api_changes_are_audited_with_the_api_keys_name_before_and_after(
    database_url: str, http: httpx.AsyncClient
) -> None:
    async with running_app(config_from_mapping(base_config(database_url))) as app:
        await ok(http, app.url, "PUT", "/overrides/+34", {"channel": "twilio-main"})
        await ok(http, app.url, "PUT", "/overrides/+34", {"channel": "meta-second"})
        await ok(http, app.url, "PUT", "/overrides/+34 600-111-222", {"channel": "meta-main"})
        await ok(http, app.url, "PUT", "/rollout", {"channel": "twilio-main", "percent": 12.5})
        await ok(http, app.url, "PUT", "/default", {"channel": "meta-second"})
        removed = await ok(http, app.url, "DELETE", "/overrides/+34")
        shown = await ok(http, app.url, "GET", "")
        entries = (await ok(http, app.url, "GET", "/audit"))["entries"]

    assert removed["match"] == "+34" and removed["channel"] == "meta-second"
    assert [(e["actor"], e["action"], e["before"], e["after"]) for e in reversed(entries)] == [
        ("tests", "set_override", None, {"match": "+34", "channel": "twilio-main"}),
        (
            "tests",
            "set_override",
            {"match": "+34", "channel": "twilio-main"},
            {"match": "+34", "channel": "meta-second"},
        ),
        ("tests", "set_override", None, {"match": PEDRO, "channel": "meta-main"}),  # stored in E.164
        ("tests", "set_rollout", {"channel": None, "percent": 0.0}, {"channel": "twilio-main", "percent": 12.5}),
        ("tests", "set_default_channel", {"default_channel": None}, {"default_channel": "meta-second"}),
        ("tests", "remove_override", {"match": "+34", "channel": "meta-second"}, None),
    ]
    assert all(datetime.fromisoformat(e["occurred_at"]) > datetime.now(UTC) - timedelta(minutes=1) for e in entries)
    flags = shown["flags"]
    assert [(o["match"], o["channel"], o["kind"]) for o in flags["overrides"]] == [(PEDRO, "meta-main", "number")]
    assert flags["rollout"] == {"channel": "twilio-main", "percent": 12.5}
    assert (flags["default_channel"], flags["default_channel_flag"]) == ("meta-second", "meta-second")
    assert [(c["name"], c["healthy"], c["circuit"]) for c in shown["channels"]] == [
        ("meta-main", True, "closed"),
        ("meta-second", True, "closed"),
        ("twilio-main", True, "closed"),
    ]
    assert shown["cutover"] == {"from_channel": None, "to_channel": None, "started_at": None, "finished_at": None}


RECEIVE_ONLY = {
    "name": "meta-receive",
    "provider": "meta",
    "business_number": "+15550007777",
    "phone_number_id": "420000000000077",
    "app_secret": "meta-app-secret-for-tests-0001",
    "verify_token": "meta-verify-token-for-tests",
}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/overrides/hola", {"channel": "twilio-main"}, 422, "invalid_match"),
        ("PUT", "/overrides/+3460011122233344", {"channel": "twilio-main"}, 422, "invalid_match"),
        ("PUT", "/overrides/+0034", {"channel": "twilio-main"}, 422, "invalid_match"),
        ("PUT", "/overrides/+34", {"channel": "nope"}, 422, "unknown_channel"),
        ("PUT", "/overrides/+34", {"channel": "meta-receive"}, 422, "channel_cannot_send"),
        ("PUT", "/overrides/+34", {}, 422, "invalid_request"),
        ("PUT", "/rollout", {"channel": "twilio-main", "percent": 100.5}, 422, "invalid_request"),
        ("PUT", "/rollout", {"channel": "twilio-main", "percent": -1}, 422, "invalid_request"),
        ("PUT", "/rollout", {"channel": "nope", "percent": 10}, 422, "unknown_channel"),
        ("PUT", "/default", {"channel": "meta-receive"}, 422, "channel_cannot_send"),
        ("PUT", "/default", {"channel": "twilio-main", "extra": 1}, 422, "invalid_request"),
        ("DELETE", "/overrides/+34", None, 404, "override_not_found"),
        ("DELETE", "/overrides/hola", None, 422, "invalid_match"),
        ("POST", "/explain", {"to": "hola"}, 422, "invalid_phone"),
        ("POST", "/explain", {"to": LUCIA, "channel": "nope"}, 422, "unknown_channel"),
        (
            "POST",
            "/explain",
            {"to": LUCIA, "template": {"name": "nope", "language": "es"}},
            422,
            "template_not_approved",
        ),
    ],
)
async def test_bad_flag_changes_are_refused_with_a_json_error_and_leave_no_audit(
    database_url: str, http: httpx.AsyncClient, method: str, path: str, body: Any, status: int, code: str
) -> None:
    data = base_config(database_url)
    data["channels"].append(RECEIVE_ONLY)
    async with running_app(config_from_mapping(data)) as app:
        response = await call(http, app.url, method, path, body)
        audit = await ok(http, app.url, "GET", "/audit")

    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert audit["entries"] == []


async def test_routing_needs_an_api_key(database_url: str, http: httpx.AsyncClient) -> None:
    async with running_app(config_from_mapping(base_config(database_url))) as app:
        shown = await http.get(f"{app.url}/v1/routing")
        changed = await http.put(f"{app.url}/v1/routing/default", json={"channel": "twilio-main"})

    assert (shown.status_code, changed.status_code) == (401, 401)


# --------------------------------------------------------------------------------------------
# Changes through the CLI


def toml_of(data: dict[str, Any]) -> str:
    """The configuration mapping as a TOML file (JSON strings, numbers and booleans are valid TOML)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in data.items() if not isinstance(value, list)]
    for key, items in data.items():
        if isinstance(items, list):
            for item in items:
                lines += [f"[[{key}]]", *(f"{k} = {json.dumps(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LEADLINE_DATABASE_URL", raising=False)
    yield CliRunner()


async def test_cli_changes_are_audited_as_the_os_user_and_seen_by_the_api(
    database_url: str, http: httpx.AsyncClient, runner: CliRunner, tmp_path: Path
) -> None:
    data = base_config(database_url)
    path = tmp_path / "leadline.toml"
    path.write_text(toml_of(data), encoding="utf-8")

    async def leadline(*args: str) -> Result:
        # The CLI runs its own event loop, so it runs on a thread of its own.
        return await asyncio.to_thread(runner.invoke, cli, ["routing", *args, "--config", str(path)])

    async with running_app(config_from_mapping(data)) as app:
        results = [
            await leadline("override", "set", "+52", "twilio-main"),
            await leadline("override", "set", "+52 155 1234 5678", "meta-second"),
            await leadline("rollout", "twilio-main", "25"),
            await leadline("default", "meta-second"),
            await leadline("override", "remove", "+5215512345678"),
        ]
        missing = await leadline("override", "remove", "+5215512345678")
        invalid = await leadline("override", "set", "hola", "twilio-main")
        unknown = await leadline("default", "nope")
        explained = await leadline("explain", PEDRO)
        shown = await leadline("show")
        audit = await leadline("audit")
        api_entries = (await ok(http, app.url, "GET", "/audit"))["entries"]
        api_decision = await decision(http, app.url, LUCIA)

    assert [r.exit_code for r in results] == [0] * 5, [r.output for r in results]
    assert (missing.exit_code, invalid.exit_code, unknown.exit_code) == (1, 2, 2)
    assert "no routing override for '+5215512345678'" in missing.output
    assert "neither a phone number" in invalid.output
    actor = f"cli:{getpass.getuser()}"
    assert [(e["actor"], e["action"]) for e in reversed(api_entries)] == [
        (actor, "set_override"),
        (actor, "set_override"),
        (actor, "set_rollout"),
        (actor, "set_default_channel"),
        (actor, "remove_override"),
    ]
    assert api_entries[0]["before"] == {"match": "+5215512345678", "channel": "meta-second"}
    assert api_decision == ("twilio-main", "prefix_override")
    pedro = ("twilio-main", "rollout") if rollout_bucket(PEDRO) < 25 else ("meta-second", "default_channel")
    assert f"{PEDRO} → {pedro[0]} ({pedro[1]})" in explained.output
    assert "25% → twilio-main" in shown.output and "+52 → twilio-main" in shown.output
    assert "meta-second" in shown.output and actor in shown.output
    assert audit.exit_code == 0 and audit.output.count(actor) == 5


# --------------------------------------------------------------------------------------------
# Across processes and restarts


@asynccontextmanager
async def second_process(data: dict[str, Any]) -> AsyncIterator[str]:
    """Another leadline server process on the same database; yields its URL."""
    script = Path(__file__).parent / "routing_process.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), json.dumps(data), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        url = (await process.stdout.readline()).decode().strip()
        assert url.startswith("http://"), f"the second process did not start (exit {await process.wait()})"
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def test_flag_changed_on_one_process_decides_the_next_message_on_another(
    database_url: str, http: httpx.AsyncClient
) -> None:
    data = base_config(database_url)
    async with running_app(config_from_mapping(data)) as first, second_process(data) as second:
        before = await decision(http, second, LUCIA)

        started = time.monotonic()
        await ok(http, first.url, "PUT", "/default", {"channel": "twilio-main"})
        after_default = await decision(http, second, LUCIA)
        seen_within = time.monotonic() - started

        await ok(http, first.url, "PUT", f"/overrides/{LUCIA}", {"channel": "meta-second"})
        after_override = await decision(http, second, LUCIA)
        await ok(http, second, "DELETE", f"/overrides/{LUCIA}")
        after_removal = await decision(http, first.url, LUCIA)

    assert before == ("meta-main", "first_channel")
    assert after_default == ("twilio-main", "default_channel")
    assert seen_within < 1.0
    assert after_override == ("meta-second", "number_override")
    assert after_removal == ("twilio-main", "default_channel")


async def test_flags_and_circuits_survive_a_restart(database_url: str, http: httpx.AsyncClient) -> None:
    config = config_from_mapping(base_config(database_url))
    async with running_app(config) as app:
        await ok(http, app.url, "PUT", "/overrides/+34", {"channel": "meta-second"})
        await ok(http, app.url, "PUT", "/rollout", {"channel": "twilio-main", "percent": 100})
        await ok(http, app.url, "PUT", "/default", {"channel": "meta-second"})
        now = datetime.now(UTC)
        async with app.services.db.transaction() as conn:
            await conn.execute(
                channel_health.insert().values(
                    channel="twilio-main",
                    state="open",
                    consecutive_failures=3,
                    opened_at=now,
                    next_probe_at=now + timedelta(hours=1),
                    updated_at=now,
                )
            )
        before = await ok(http, app.url, "GET", "")

    async with running_app(config) as restarted:
        after = await ok(http, restarted.url, "GET", "")
        spain = await decision(http, restarted.url, PEDRO)
        mexico = await ok(http, restarted.url, "POST", "/explain", {"to": LUCIA})

    assert after["flags"] == before["flags"]
    assert [c["circuit"] for c in after["channels"]] == ["closed", "closed", "open"]
    assert spain == ("meta-second", "prefix_override")
    assert (mexico["channel"], mexico["reason"]) == ("meta-second", "default_channel")
    assert mexico["passed_over"] == ["twilio-main: circuit open"]  # the rollout's channel is down
