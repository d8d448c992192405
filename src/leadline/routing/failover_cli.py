"""``leadline health`` and ``leadline held``: each channel's circuit breaker, and the messages failover held.
The same functions as /v1/health and /v1/held."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from leadline.cli_support import ConfigOption, console, err_console, load_config_or_exit, run_with_database, when
from leadline.routing.failover import health_report, list_held, release_held
from leadline.store.db import Database

if TYPE_CHECKING:
    pass

held_app = typer.Typer(
    help="Messages held because their channel is down and they could not move; release them.",
    invoke_without_command=True,
)


_CIRCUIT_STYLE = {"closed": "[green]closed[/]", "open": "[red]open[/]", "half_open": "[yellow]half-open[/]"}


def health(config: ConfigOption = None) -> None:
    """Every channel's circuit breaker: state, consecutive failures, last error, when it opened and probes."""
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> list[dict[str, Any]]:
        async with db.read() as conn:
            return await health_report(conn, loaded, datetime.now(UTC))

    table = Table("channel", "provider", "circuit", "failures", "last error", "opened", "next probe", "held")
    for row in run_with_database(loaded, fetch):
        error = " ".join(filter(None, [row["last_error_code"], row["last_error_message"]]))
        table.add_row(
            row["name"],
            row["provider"],
            _CIRCUIT_STYLE[row["circuit"]] if row["can_send"] else "- (cannot send)",
            str(row["consecutive_failures"]),
            escape(error[:60]),
            when(row["opened_at"]),
            when(row["next_probe_at"]),
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
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> list[dict[str, Any]]:
        async with db.read() as conn:
            return await list_held(conn, channel=channel, limit=limit)

    rows = run_with_database(loaded, fetch)
    console.print(f"{len(rows)} held message(s)")
    table = Table("message", "to", "channel", "kind", "held since", "reason")
    for row in rows:
        table.add_row(
            row["id"],
            row["to"] or "",
            row["channel"],
            row["kind"],
            when(row["held_at"]),
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
    loaded = load_config_or_exit(config)

    async def work(db: Database) -> list[str]:
        async with db.transaction() as conn:
            return await release_held(conn, now=datetime.now(UTC), message_ids=None if all_held else message_ids)

    released = run_with_database(loaded, work)
    console.print(f"[green]✓[/] released {len(released)} message(s)")
    for message_id in released:
        console.print(f"  {message_id}")
    if message_ids and len(released) < len(message_ids):
        missing = sorted(set(message_ids) - set(released))
        err_console.print(f"[yellow]not held:[/] {', '.join(missing)}")
