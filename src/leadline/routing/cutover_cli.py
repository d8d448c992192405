"""``leadline cutover``: move a live channel to another provider (see docs/cutover.md).

Exit codes: 0 done, 1 refused (blockers, threads still draining), 2 a wrong channel or configuration.
"""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from leadline.cli_support import ConfigOption, T, console, err_console, load_config_or_exit, run_with_database, when
from leadline.routing.cutover import (
    Blocker,
    CutoverBlocked,
    CutoverError,
    CutoverStatus,
    Finished,
    Started,
    StillDraining,
    cutover_status,
    finish_cutover,
    plan,
    start_cutover,
)
from leadline.store.db import Database

if TYPE_CHECKING:
    from leadline.config import LeadlineConfig

cutover_app = typer.Typer(
    help="Move a live channel to another provider: plan, start, watch the drain, finish.", no_args_is_help=True
)

FromOption = Annotated[str, typer.Option("--from", help="The channel traffic moves off (its threads drain there)")]
ToOption = Annotated[str, typer.Option("--to", help="The channel new conversations move to")]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who is doing this, for the audit (default: cli:$USER)")
]


def _run(config: LeadlineConfig, work: Callable[[Database], Awaitable[T]]) -> T:
    """A cutover refused for a reason the person on call must act on exits 1; a bad request exits 2."""
    try:
        return run_with_database(config, work)
    except (CutoverBlocked, StillDraining) as exc:
        err_console.print(f"[red]✗[/] {escape(exc.message)}")
        raise typer.Exit(1) from None
    except CutoverError as exc:
        err_console.print(f"[red]✗[/] {escape(exc.message)}")
        raise typer.Exit(2) from None


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _print_blockers(blockers: list[Blocker]) -> None:
    table = Table("kind", "channel", "subject", "what to do", title="Blockers")
    for blocker in blockers:
        table.add_row(blocker.kind.value, blocker.channel, escape(blocker.subject or ""), escape(blocker.message))
    console.print(table)


@cutover_app.command("plan")
def plan_command(from_channel: FromOption, to_channel: ToOption, config: ConfigOption = None) -> None:
    """List what is not ready on the new channel: templates, webhooks, credentials (a live call)."""
    loaded = load_config_or_exit(config)

    async def work(db: Database) -> list[Blocker]:
        async with db.read() as conn:
            return await plan(conn, loaded, from_channel, to_channel)

    blockers = _run(loaded, work)
    if not blockers:
        console.print(
            f"[green]✓[/] {to_channel} is ready: leadline cutover start --from {from_channel} --to {to_channel}"
        )
        return
    _print_blockers(blockers)
    console.print(f"[red]✗[/] {len(blockers)} blocker(s) before a cutover from {from_channel} to {to_channel}")
    raise typer.Exit(1)


@cutover_app.command("start")
def start_command(
    from_channel: FromOption,
    to_channel: ToOption,
    force: Annotated[bool, typer.Option("--force", help="Start even though the plan has blockers")] = False,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Send new conversations to the new channel; threads in flight keep draining on the old one."""
    loaded = load_config_or_exit(config)

    async def work(db: Database) -> Started:
        return await start_cutover(
            db, loaded, from_channel, to_channel, actor=_actor(actor), now=datetime.now(UTC), force=force
        )

    started = _run(loaded, work)
    if started.forced_past:
        _print_blockers(started.forced_past)
        console.print(f"[yellow]![/] started past {len(started.forced_past)} blocker(s) (--force)")
    if started.already:
        console.print(f"[yellow]![/] this cutover has been in progress since {when(started.started_at)}")
    else:
        console.print(
            f"[green]✓[/] new conversations go to [bold]{to_channel}[/] from {when(started.started_at)}; "
            f"{started.draining.count} thread(s) drain on [bold]{from_channel}[/]"
        )
    console.print("  watch it: leadline cutover status")


@cutover_app.command("status")
def status_command(config: ConfigOption = None) -> None:
    """Threads still draining on the old channel, messages per channel over the last hour, failovers."""
    loaded = load_config_or_exit(config)

    async def work(db: Database) -> CutoverStatus:
        async with db.read() as conn:
            return await cutover_status(conn, loaded, now=datetime.now(UTC))

    status = _run(loaded, work)
    if status.started_at is None:
        console.print(f"no cutover has been started; default channel: {status.default_channel or '-'}")
    else:
        state = "in progress" if status.in_progress else f"finished {when(status.finished_at)}"
        console.print(
            f"cutover [bold]{status.from_channel}[/] → [bold]{status.to_channel}[/], started "
            f"{when(status.started_at)}, {state}"
        )
        drain = status.draining
        console.print(
            ProgressBar(total=max(status.total, 1), completed=status.drained if status.total else 1, width=40)
        )
        console.print(f"  drained {status.drained}/{status.total} thread(s); {drain.count} still draining")
        if drain.count:
            console.print(f"  oldest last message {when(drain.oldest_last_message_at)}")
            console.print(f"  drained by {when(drain.drains_at)} (in {_duration(drain.remaining(status.now))})")
        console.print(f"  failovers since the start: {status.failovers_since_start}")
    table = Table("channel", "in", "out", "failovers", title="Messages over the last hour")
    for traffic in status.traffic:
        table.add_row(traffic.channel, str(traffic.inbound), str(traffic.outbound), str(traffic.failovers))
    console.print(table)


@cutover_app.command("finish")
def finish_command(
    force: Annotated[bool, typer.Option("--force", help="Finish even though threads are still draining")] = False,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Mark the cutover finished; refused while threads are still draining on the old channel."""
    loaded = load_config_or_exit(config)

    async def work(db: Database) -> Finished:
        async with db.transaction() as conn:
            return await finish_cutover(conn, loaded, actor=_actor(actor), now=datetime.now(UTC), force=force)

    finished = _run(loaded, work)
    note = f" ({finished.draining.count} thread(s) were still draining: --force)" if finished.draining.count else ""
    console.print(
        f"[green]✓[/] cutover {finished.from_channel} → {finished.to_channel} finished "
        f"{when(finished.finished_at)}{note}"
    )
