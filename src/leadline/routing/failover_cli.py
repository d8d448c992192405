"""``leadline health`` and ``leadline held``: each channel's circuit breaker, and the messages failover held.
The same functions as /v1/health and /v1/held."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leadline.routing.failover import health_report, list_held, release_held
from leadline.store.db import Database

if TYPE_CHECKING:
    from leadline.config import LeadlineConfig

held_app = typer.Typer(
    help="Messages held because their channel is down and they could not move; release them.",
    invoke_without_command=True,
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file (default: $LEADLINE_CONFIG or ./leadline.toml)")
]


def _config(path: Path | None) -> LeadlineConfig:
    from leadline.cli import _load  # the main CLI's loader prints configuration problems the same way

    return _load(path)


def _run(config: LeadlineConfig, work: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        db = Database(config.settings.database_url)
        try:
            await db.migrate()
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


_CIRCUIT_STYLE = {"closed": "[green]closed[/]", "open": "[red]open[/]", "half_open": "[yellow]half-open[/]"}


def health(config: ConfigOption = None) -> None:
    """Every channel's circuit breaker: state, consecutive failures, last error, when it opened and probes."""
    loaded = _config(config)

    async def fetch(db: Database) -> list[dict[str, Any]]:
        async with db.read() as conn:
            return await health_report(conn, loaded, datetime.now(UTC))

    table = Table("channel", "provider", "circuit", "failures", "last error", "opened", "next probe", "held")
    for row in _run(loaded, fetch):
        error = " ".join(filter(None, [row["last_error_code"], row["last_error_message"]]))
        table.add_row(
            row["name"],
            row["provider"],
            _CIRCUIT_STYLE[row["circuit"]] if row["can_send"] else "- (cannot send)",
            str(row["consecutive_failures"]),
            escape(error[:60]),
            _when(row["opened_at"]),
            _when(row["next_probe_at"]),
            str(row["held"]),
        )
    console.print(table)


@held_app.callback()
def held(
    ctx: typer.Context,
    config: ConfigOption = None,
    channel: Annotated[str | None, typer.Option(help="Only those held on this channel")] = None,
    limit: Annotated[int, typer.Option(help="How many, oldest first")] = 200,
) -> None:
    """List held messages (``leadline held release`` puts them back in the queue)."""
    if ctx.invoked_subcommand is not None:
        return
    loaded = _config(config)

    async def fetch(db: Database) -> list[dict[str, Any]]:
        async with db.read() as conn:
            return await list_held(conn, channel=channel, limit=limit)

    rows = _run(loaded, fetch)
    console.print(f"{len(rows)} held message(s)")
    table = Table("message", "to", "channel", "kind", "held since", "reason")
    for row in rows:
        table.add_row(
            row["id"],
            row["to"] or "",
            row["channel"],
            row["kind"],
            _when(row["held_at"]),
            escape((row["reason"] or "")[:100]),
        )
    console.print(table)


@held_app.command("release")
def release(
    message_ids: Annotated[list[str] | None, typer.Argument(help="Held messages to release")] = None,
    all_held: Annotated[bool, typer.Option("--all", help="Release every held message")] = False,
    config: ConfigOption = None,
) -> None:
    """Put held messages back in the queue. One whose channel is still down goes through failover again;
    held messages are also released by themselves when their channel's circuit closes."""
    if all_held == bool(message_ids):
        err_console.print("[red]✗[/] name held messages, or pass --all")
        raise typer.Exit(2)
    loaded = _config(config)

    async def work(db: Database) -> list[str]:
        async with db.transaction() as conn:
            return await release_held(conn, now=datetime.now(UTC), message_ids=None if all_held else message_ids)

    released = _run(loaded, work)
    console.print(f"[green]✓[/] released {len(released)} message(s)")
    for message_id in released:
        console.print(f"  {message_id}")
    if message_ids and len(released) < len(message_ids):
        missing = sorted(set(message_ids) - set(released))
        err_console.print(f"[yellow]not held:[/] {', '.join(missing)}")
