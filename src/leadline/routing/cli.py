"""``leadline routing``: see and change the routing flags (audited as ``cli:<os user>``), and ask the policy
which channel a number would get now. The same functions as /v1/routing."""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from leadline.cli_support import ConfigOption, console, err_console, load_config_or_exit, run_with_database, when
from leadline.domain.phones import InvalidPhoneNumber
from leadline.domain.routing import NoRoute
from leadline.routing import flags
from leadline.routing.explain import Explanation, explain_route
from leadline.routing.facts import channel_states
from leadline.routing.health import channel_health_rows
from leadline.store.db import Database

if TYPE_CHECKING:
    from leadline.config import LeadlineConfig

routing_app = typer.Typer(
    help="The routing policy's flags: per-number and prefix overrides, the rollout, the default channel.",
    no_args_is_help=True,
)
override_app = typer.Typer(help="Send one number, or every number under a prefix, through a channel.")
routing_app.add_typer(override_app, name="override")


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _change(config: LeadlineConfig, work: Callable[[Database], Awaitable[Any]]) -> None:
    try:
        run_with_database(config, work)
    except flags.InvalidFlag as exc:
        err_console.print(f"[red]✗[/] {escape(exc.message)}")
        raise typer.Exit(2) from None
    except flags.UnknownOverride as exc:
        err_console.print(f"[red]✗[/] {escape(exc.message)}")
        raise typer.Exit(1) from None


def _audit_table(entries: list[flags.AuditEntry]) -> Table:
    table = Table("when (UTC)", "actor", "action", "before", "after", title="audit (newest first)")
    for entry in entries:
        table.add_row(
            when(entry.occurred_at),
            escape(entry.actor),
            entry.action,
            escape(json.dumps(entry.before, ensure_ascii=False)),
            escape(json.dumps(entry.after, ensure_ascii=False)),
        )
    return table


@routing_app.command("show")
def show(config: ConfigOption = None, audit_entries: Annotated[int, typer.Option("--audit")] = 10) -> None:
    """The flags, every channel with its health, and the latest flag changes."""
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> tuple[flags.RoutingFlags, list[dict[str, Any]], dict[str, bool], list[Any]]:
        async with db.read() as conn:
            healthy = {s.name: s.healthy for s in await channel_states(conn, loaded, datetime.now(UTC))}
            return (
                await flags.read_flags(conn, loaded),
                await channel_health_rows(conn),
                healthy,
                await flags.list_audit(conn, limit=audit_entries),
            )

    current, health_rows, healthy, entries = run_with_database(loaded, fetch)
    health = {row["channel"]: row for row in health_rows}

    table = Table("flag", "value", title="routing flags")
    table.add_row(
        "default channel",
        escape(current.default_channel or "-") + ("" if current.default_channel_flag else "  (configuration)"),
    )
    rollout = f"{current.rollout_percent:g}% → {current.rollout_channel}" if current.rollout_channel else "-"
    table.add_row("rollout", escape(rollout))
    for override in current.overrides:
        table.add_row(f"override ({override.kind})", escape(f"{override.match} → {override.channel}"))
    if current.cutover_from or current.cutover_to:
        table.add_row(
            "cutover",
            escape(f"{current.cutover_from} → {current.cutover_to}")
            + f"  started {when(current.cutover_started_at)}, finished {when(current.cutover_finished_at)}",
        )
    console.print(table)

    channels = Table("channel", "provider", "number", "sends", "circuit", "failures", "last error", title="channels")
    for channel in loaded.channels:
        row = health.get(channel.name, {})
        if not channel.can_send:
            circuit = "-"
        elif row.get("state") != "open":
            circuit = "[green]closed[/]"
        elif healthy.get(channel.name):
            circuit = "[yellow]half-open[/]"
        else:
            circuit = f"[red]open[/] until {when(row.get('next_probe_at'))}"
        channels.add_row(
            channel.name,
            channel.provider,
            channel.business_number,
            "yes" if channel.can_send else "no",
            circuit,
            str(row.get("consecutive_failures", 0)),
            escape(" ".join(filter(None, [row.get("last_error_code"), row.get("last_error_message")]))[:60]),
        )
    console.print(channels)
    console.print(_audit_table(entries))


@override_app.command("set")
def override_set(
    match: Annotated[str, typer.Argument(help="An exact number (+34600111222) or a prefix (+34)")],
    channel: Annotated[str, typer.Argument(help="The channel to send through")],
    config: ConfigOption = None,
) -> None:
    """Send a number, or every number under a prefix, through CHANNEL."""
    loaded = load_config_or_exit(config)

    async def change(db: Database) -> flags.Override:
        return await flags.set_override(db, loaded, match, channel, actor=_actor(), now=datetime.now(UTC))

    _change(loaded, change)
    console.print(f"[green]✓[/] {escape(match)} → {escape(channel)}")


@override_app.command("remove")
def override_remove(
    match: Annotated[str, typer.Argument(help="The number or prefix of the override")],
    config: ConfigOption = None,
) -> None:
    """Remove a number's or a prefix's override."""
    loaded = load_config_or_exit(config)

    async def change(db: Database) -> flags.Override:
        return await flags.remove_override(db, match, actor=_actor(), now=datetime.now(UTC))

    _change(loaded, change)
    console.print(f"[green]✓[/] override for {escape(match)} removed")


@routing_app.command("rollout")
def rollout(
    channel: Annotated[str, typer.Argument(help="The channel rolled out to")],
    percent: Annotated[float, typer.Argument(help="0 to 100: the share of numbers (by hash) sent through it")],
    config: ConfigOption = None,
) -> None:
    """Send PERCENT of numbers through CHANNEL (each number always lands on the same side)."""
    loaded = load_config_or_exit(config)

    async def change(db: Database) -> None:
        await flags.set_rollout(db, loaded, channel, percent, actor=_actor(), now=datetime.now(UTC))

    _change(loaded, change)
    console.print(f"[green]✓[/] rollout: {percent:g}% → {escape(channel)}")


@routing_app.command("default")
def default(
    channel: Annotated[str, typer.Argument(help="The channel for numbers nothing else claims")],
    config: ConfigOption = None,
) -> None:
    """Set the default channel."""
    loaded = load_config_or_exit(config)

    async def change(db: Database) -> None:
        await flags.set_default_channel(db, loaded, channel, actor=_actor(), now=datetime.now(UTC))

    _change(loaded, change)
    console.print(f"[green]✓[/] default channel: {escape(channel)}")


@routing_app.command("explain")
def explain(
    number: Annotated[str, typer.Argument(help="The customer's number")],
    config: ConfigOption = None,
    channel: Annotated[str | None, typer.Option(help="As if the request named this channel")] = None,
    template: Annotated[str | None, typer.Option(help="As if sending this template (needs --language)")] = None,
    language: Annotated[str | None, typer.Option(help="The template's language")] = None,
) -> None:
    """Which channel a message to NUMBER would go through now, and why (nothing is sent)."""
    loaded = load_config_or_exit(config)
    if (template is None) != (language is None):
        raise typer.BadParameter("give --template and --language together", param_hint="--template")

    async def ask(db: Database) -> Explanation:
        async with db.read() as conn:
            return await explain_route(
                conn,
                loaded,
                to=number,
                now=datetime.now(UTC),
                channel=channel,
                template=(template, language) if template and language else None,
            )

    try:
        found = run_with_database(loaded, ask)
    except InvalidPhoneNumber as exc:
        err_console.print(f"[red]✗[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except NoRoute as exc:
        err_console.print(f"[red]✗ no route ({exc.code}):[/] {escape(exc.message)}")
        raise typer.Exit(1) from None
    decision = found.decision
    console.print(f"{found.to} → [bold]{decision.channel}[/] ({decision.reason})")
    for note in decision.passed_over:
        console.print(f"  passed over: {escape(note)}")
    if not found.window_open:
        console.print("  the window is closed on that channel: only a template can go")


@routing_app.command("audit")
def audit(config: ConfigOption = None, limit: Annotated[int, typer.Option(help="How many, newest first")] = 50) -> None:
    """Every flag change: who, when, before, after."""
    loaded = load_config_or_exit(config)

    async def fetch(db: Database) -> list[flags.AuditEntry]:
        async with db.read() as conn:
            return await flags.list_audit(conn, limit=limit)

    console.print(_audit_table(run_with_database(loaded, fetch)))
