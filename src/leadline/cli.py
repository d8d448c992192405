"""The ``leadline`` command: run the service, look at leads and timelines, check the configuration."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from leadline.cli_support import ConfigOption, console, err_console, load_config_or_exit, run_with_database, when
from leadline.config import ConfigError, LeadlineConfig, config_path, hash_api_key, read_config_file
from leadline.logging import configure_logging
from leadline.pipeline.outbound import redrive_dead_sends
from leadline.routing.cli import routing_app
from leadline.routing.cutover_cli import cutover_app
from leadline.routing.failover_cli import health, held_app
from leadline.store import jobs as job_store
from leadline.store import queries
from leadline.store.db import Database
from leadline.store.tables import api_keys
from leadline.templates.cli import templates_app

app = typer.Typer(help="leadline: the seam between your CRM and WhatsApp providers.", no_args_is_help=True)
outbox_app = typer.Typer(help="The job table: failed (dead-letter) jobs and re-driving them.", no_args_is_help=True)
api_key_app = typer.Typer(help="API keys for /v1.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
app.add_typer(api_key_app, name="api-key")
app.add_typer(templates_app, name="templates")
app.add_typer(cutover_app, name="cutover")
app.add_typer(routing_app, name="routing")
app.add_typer(held_app, name="held")
app.command("health")(health)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration and say exactly what is wrong."""
    loaded = load_config_or_exit(config)
    console.print(f"[green]✓[/] {config or config_path()} is valid")
    for channel in loaded.channels:
        console.print(f"  channel [bold]{channel.name}[/] ({channel.provider}) {channel.business_number}")
    console.print(f"  database: {loaded.settings.database_url.split('@')[-1]}")
    console.print(f"  router rules: {len(loaded.settings.router)}, API keys: {len(loaded.settings.api_keys)}")


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Create or upgrade the database schema."""
    loaded = load_config_or_exit(config)

    async def noop(_db: Database) -> None:
        return None

    run_with_database(loaded, noop)
    console.print("[green]✓[/] database schema is up to date")


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    worker: Annotated[bool, typer.Option(help="Run a job worker in this process")] = True,
    sandbox_port: Annotated[int, typer.Option(help="Port of the built-in sandbox (sandbox mode only)")] = 8001,
) -> None:
    """Run the HTTP service (webhooks, /v1) with an in-process worker.

    With no channels configured it starts in sandbox mode: a Meta and a Twilio channel served by the
    built-in provider sandbox, so the whole loop works without credentials.
    """
    import uvicorn

    from leadline.api.app import create_app

    loaded = load_config_or_exit(config)
    configure_logging(loaded.settings.log_level)
    sandbox_url = f"http://{host}:{sandbox_port}"
    if not loaded.channels:
        from leadline.sandbox.dev import sandbox_mode_config

        try:
            loaded = sandbox_mode_config(
                read_config_file(config), leadline_url=f"http://{host}:{port}", sandbox_url=sandbox_url
            )
        except ConfigError as exc:
            for problem in exc.problems:
                err_console.print(f"  [red]✗[/] {escape(problem)}")
            raise typer.Exit(2) from None
        _print_sandbox_welcome(loaded, host, port, sandbox_url)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(loaded, run_worker=worker), host=host, port=port, log_level="warning", access_log=False
        )
    )

    async def run() -> None:
        sandbox = None
        if any(c.api_base_url and c.api_base_url.startswith(sandbox_url) for c in loaded.channels):
            from leadline.sandbox.config import SandboxConfig
            from leadline.sandbox.server import start_sandbox

            sandbox = await start_sandbox(
                SandboxConfig.from_leadline(loaded, f"http://{host}:{port}"), host, sandbox_port
            )
        try:
            await server.serve()
        finally:
            if sandbox is not None:
                await sandbox.close()

    run_on_uvloop(run())


def run_on_uvloop(main: Coroutine[Any, Any, None]) -> None:
    """The long-running commands run on uvloop: measured in bench/outbound.py, the standard event loop's
    transports and scheduling were a fifth of the server's work."""
    import uvloop

    uvloop.run(main)


def _print_sandbox_welcome(config: LeadlineConfig, host: str, port: int, sandbox_url: str) -> None:
    from leadline.sandbox.dev import SANDBOX_API_KEY

    base = f"http://{host}:{port}"
    console.print("[bold yellow]No channels configured: sandbox mode[/] (providers simulated at " + sandbox_url + ")")
    console.print(f"  leadline  {base}   API key: [bold]{SANDBOX_API_KEY}[/]")
    for channel in config.channels:
        console.print(f"  channel   {channel.name} ({channel.provider}) {channel.business_number}")
    console.print("Try it:")
    console.print(
        f"  curl -s -XPOST {sandbox_url}/_sandbox/inbound -H 'content-type: application/json' "
        """-d '{"provider":"meta","from":"+5215512345678","name":"Lucía","text":"Hola, ¿tienen envío gratis?"}'"""
    )
    console.print("  leadline timeline +5215512345678")
    console.print(
        f"  curl -s -XPOST {base}/v1/messages -H 'authorization: Bearer {SANDBOX_API_KEY}' "
        """-H 'content-type: application/json' -d '{"to":"+5215512345678","text":"¡Sí! Envío gratis hoy."}'"""
    )


@app.command()
def sandbox(
    config: ConfigOption = None,
    leadline_url: Annotated[str, typer.Option(help="Where leadline's webhooks are")] = "http://127.0.0.1:8000",
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8001,
    status_mode: Annotated[str, typer.Option(help="auto: statuses follow each send; manual: on request")] = "auto",
) -> None:
    """Run the provider sandbox alone, impersonating the configured channels' providers."""
    from leadline.sandbox.config import SandboxConfig
    from leadline.sandbox.server import run_sandbox

    loaded = load_config_or_exit(config)
    configure_logging(loaded.settings.log_level)
    if status_mode not in ("auto", "manual"):
        raise typer.BadParameter("auto or manual", param_hint="--status-mode")
    sandbox_config = SandboxConfig.from_leadline(
        loaded, leadline_url, status_mode="auto" if status_mode == "auto" else "manual"
    )
    console.print(
        f"sandbox on http://{host}:{port}: Meta at /meta/v25.0, Twilio at /twilio; webhooks to {leadline_url}"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sandbox(sandbox_config, host, port))


@app.command("worker")
def run_worker(config: ConfigOption = None) -> None:
    """Run a job worker alone (any number can run, on any host, against one PostgreSQL database)."""
    from leadline.bootstrap import build_services

    loaded = load_config_or_exit(config)
    configure_logging(loaded.settings.log_level)

    async def run() -> None:
        services = build_services(loaded)
        await services.start()
        stop = asyncio.Event()
        try:
            await services.new_worker().run_forever(stop)
        finally:
            await services.close()

    with contextlib.suppress(KeyboardInterrupt):
        run_on_uvloop(run())


@app.command()
def leads(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many, most recent first")] = 50,
    phone: Annotated[str | None, typer.Option(help="Only the lead with this number")] = None,
) -> None:
    """List leads."""
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> list[dict[str, Any]]:
        async with db.read() as conn:
            if phone:
                return await queries.find_leads_by_phone(conn, phone)
            return await queries.list_leads(conn, limit=limit)

    rows = run_with_database(loaded, fetch)
    table = Table("lead", "phone", "name", "owner", "tags", "last message", "channel")
    for lead in rows:
        # Stored text is data, not Rich markup: "[image] ..." must print as it is.
        table.add_row(
            lead["id"],
            lead["phone"] or "(withheld)",
            escape(lead["display_name"] or ""),
            escape(lead["owner"] or ""),
            escape(", ".join(lead["tags"])),
            when(lead["last_inbound_at"]),
            escape(lead["last_inbound_channel"] or ""),
        )
    console.print(table)


@app.command()
def timeline(
    phone: Annotated[str, typer.Argument(help="The lead's phone number, any spelling")],
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many events, newest first")] = 50,
) -> None:
    """Show a lead's timeline."""
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        async with db.read() as conn:
            lead = await queries.lead_for_phone(conn, phone)
            if lead is None:
                return None, []
            return lead, (await queries.timeline(conn, lead["id"], limit=limit)).events

    lead, events = run_with_database(loaded, fetch)
    if lead is None:
        err_console.print(f"[red]no lead for {escape(phone)}[/]")
        raise typer.Exit(1)
    console.print(f"[bold]{escape(lead['display_name'] or lead['phone'])}[/] {lead['phone']}  ({lead['id']})")
    table = Table("when (UTC)", "channel", "what", "")
    arrows = {"message_in": "←", "message_out": "→"}
    for event in events:
        table.add_row(
            when(event["occurred_at"]),
            escape(event["channel"] or ""),
            event["kind"],
            arrows.get(event["kind"], "") + " " + escape(event["summary"] or ""),
        )
    console.print(table)


@outbox_app.command("list")
def outbox_list(
    config: ConfigOption = None,
    state: Annotated[job_store.JobState, typer.Option(help="Which jobs")] = job_store.JobState.DEAD,
    limit: int = 50,
) -> None:
    """List jobs, by default the dead-letter ones."""
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> tuple[list[dict[str, Any]], dict[str, int]]:
        async with db.read() as conn:
            return await job_store.list_jobs(conn, state=state, limit=limit), await job_store.count_by_state(conn)

    rows, counts = run_with_database(loaded, fetch)
    console.print("  ".join(f"{name}: {count}" for name, count in sorted(counts.items())) or "no jobs")
    table = Table("id", "kind", "state", "attempts", "created", "last error")
    for job in rows:
        table.add_row(
            str(job["id"]),
            job["kind"],
            job["state"],
            str(job["attempts"]),
            when(job["created_at"]),
            escape((job["last_error"] or "")[:80]),
        )
    console.print(table)


@outbox_app.command("retry")
def outbox_retry(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Dead jobs to re-drive (default: all)")] = None,
    config: ConfigOption = None,
) -> None:
    """Put dead-letter jobs back in the queue."""
    loaded = load_config_or_exit(config)

    async def redrive(db: Database) -> int:
        async with db.transaction() as conn:
            return await redrive_dead_sends(conn, job_ids or None, datetime.now(UTC))

    console.print(f"[green]✓[/] re-queued {run_with_database(loaded, redrive)} job(s)")


@api_key_app.command("create")
def api_key_create(name: str, config: ConfigOption = None) -> None:
    """Create an API key; it is shown once, and only its SHA-256 is stored."""
    loaded = load_config_or_exit(config)
    key = "ll_" + secrets.token_urlsafe(32)

    async def store(db: Database) -> None:
        async with db.transaction() as conn:
            await conn.execute(
                api_keys.insert().values(name=name, key_sha256=hash_api_key(key), created_at=datetime.now(UTC))
            )

    run_with_database(loaded, store)
    console.print(f"API key for [bold]{name}[/] (shown once, keep it safe):\n{key}")


def main() -> None:
    app()
