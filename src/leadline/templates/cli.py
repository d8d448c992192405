"""``leadline templates``: validate template files, submit them to a channel, follow their approval.

Template files (YAML or TOML) are read from ``--dir``, by default ``./templates``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from leadline.cli_support import ConfigOption, console, err_console, load_config_or_exit, run_with_database
from leadline.store.db import Database
from leadline.templates import store
from leadline.templates.definitions import load_templates
from leadline.templates.errors import InvalidTemplate
from leadline.templates.providers import APPROVED, NOT_SUBMITTED
from leadline.templates.sync import (
    SubmitOutcome,
    SyncReport,
    define_templates,
    submit_templates,
    sync_all,
    sync_channel,
)
from leadline.templates.sync import template_channels as channels_with_templates
from leadline.templates.validation import validate_template

if TYPE_CHECKING:
    pass

templates_app = typer.Typer(
    help="WhatsApp templates: define once, get them approved on every channel, see what blocks a cutover.",
    no_args_is_help=True,
)

DEFAULT_DIR = Path("templates")
DirOption = Annotated[Path, typer.Option("--dir", "-d", help="Folder of template files (YAML or TOML)")]

_STYLES = {APPROVED: "green", "PENDING": "yellow", "REJECTED": "red", "PAUSED": "red", "DISABLED": "red"}


def _read_and_validate(directory: Path) -> list[str]:
    loaded = load_templates([directory])
    problems = [str(p) for p in loaded.problems]
    for sourced in loaded.definitions:
        problems += [f"{sourced.source}: {p}" for p in validate_template(sourced.definition)]
    return problems


@templates_app.command("validate")
def validate(
    path: Annotated[Path, typer.Argument(help="A template file or a folder of them")] = DEFAULT_DIR,
) -> None:
    """Check template files against WhatsApp's rules, listing every problem."""
    if not path.exists():
        err_console.print(f"[red]{path} does not exist[/]")
        raise typer.Exit(2)
    loaded = load_templates([path])
    problems = _read_and_validate(path)
    if problems:
        for problem in problems:
            err_console.print(f"  [red]✗[/] {problem}")
        err_console.print(f"[bold red]{len(problems)} problem(s)[/] in {path}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {len(loaded.definitions)} template(s) in {path} are valid")


@templates_app.command("submit")
def submit(
    channel: Annotated[list[str], typer.Option("--channel", help="Channel to submit to (repeatable)")],
    names: Annotated[list[str] | None, typer.Argument(help="Template names (default: all)")] = None,
    directory: DirOption = DEFAULT_DIR,
    config: ConfigOption = None,
) -> None:
    """Store the template files, then submit them to the channels' providers (safe to repeat)."""
    loaded_config = load_config_or_exit(config)
    targets = []
    for name in channel:
        try:
            targets.append(loaded_config.channel(name))
        except KeyError:
            err_console.print(f"[red]no channel named {name!r}[/]")
            raise typer.Exit(2) from None
    loaded = load_templates([directory]) if directory.exists() else None
    if loaded is not None and loaded.problems:
        for problem in loaded.problems:
            err_console.print(f"  [red]✗[/] {problem}")
        raise typer.Exit(1)

    async def work(db: Database) -> list[SubmitOutcome]:
        if loaded is not None and loaded.definitions:
            await define_templates(db, loaded.definitions)
        async with db.read() as conn:
            count = len(await store.list_templates(conn, names or None))
        outcomes: list[SubmitOutcome] = []
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            for target in targets:
                task = progress.add_task(f"{target.name}", total=count)

                def advance(_outcome: SubmitOutcome, task: TaskID = task) -> None:
                    progress.advance(task)

                outcomes += await submit_templates(db, target, names or None, on_outcome=advance)
        return outcomes

    try:
        outcomes = run_with_database(loaded_config, work)
    except InvalidTemplate as exc:
        for problem in exc.problems:
            err_console.print(f"  [red]✗[/] {problem}")
        raise typer.Exit(1) from None
    table = Table("template", "channel", "result", "status", "provider id")
    for outcome in outcomes:
        if outcome.error:
            result = f"[red]failed: {outcome.error}[/]"
        else:
            result = "created" if outcome.created else "adopted (already on the provider)"
        table.add_row(
            outcome.template, outcome.channel, result, _status(outcome.status), outcome.provider_template_id or ""
        )
    console.print(table)
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


@templates_app.command("sync")
def sync(
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel")] = None,
    config: ConfigOption = None,
) -> None:
    """Pull approval statuses from the providers and import templates leadline does not know yet."""
    loaded_config = load_config_or_exit(config)

    async def work(db: Database) -> tuple[list[SyncReport], dict[str, str]]:
        if channel is None:
            return await sync_all(db, loaded_config)
        return [await sync_channel(db, loaded_config.channel(channel))], {}

    reports, failures = run_with_database(loaded_config, work)
    for report in reports:
        console.print(
            f"[green]✓[/] {report.channel}: {report.updated} template(s) updated, "
            f"{len(report.imported)} imported, {report.gone} gone"
        )
        for name in report.not_importable:
            console.print(f"  [yellow]![/] {name}: its format cannot be defined in leadline; not imported")
    for name, error in failures.items():
        err_console.print(f"[red]✗[/] {name}: {error}")
    if failures:
        raise typer.Exit(1)


@templates_app.command("status")
def status(config: ConfigOption = None) -> None:
    """The matrix of templates by channel; a template not APPROVED on a channel blocks a cutover to it."""
    loaded_config = load_config_or_exit(config)
    channels = [c.name for c in channels_with_templates(loaded_config)]

    async def fetch(db: Database) -> list[store.StoredTemplate]:
        async with db.read() as conn:
            return await store.list_templates(conn)

    templates = run_with_database(loaded_config, fetch)
    table = Table("template", "category", *channels)
    blockers: dict[str, list[str]] = {name: [] for name in channels}
    for template in templates:
        cells = []
        for name in channels:
            state = template.channels.get(name)
            value = state.status if state else NOT_SUBMITTED
            if value != APPROVED:
                blockers[name].append(template.key)
            cell = _status(value)
            if state and state.rejection_reason:
                cell += f"\n[dim]{state.rejection_reason}[/]"
            if state and state.fingerprint and state.fingerprint != template.fingerprint:
                cell += "\n[yellow]changed since submitted[/]"
            cells.append(cell)
        table.add_row(template.key, template.category, *cells)
    console.print(table)
    for name in channels:
        if blockers[name]:
            console.print(
                f"[red]✗[/] cutover to [bold]{name}[/] is blocked by {len(blockers[name])} template(s): "
                + ", ".join(blockers[name])
            )
        else:
            console.print(f"[green]✓[/] every template is approved on [bold]{name}[/]")


def _status(value: str | None) -> str:
    if value is None:
        return ""
    style = _STYLES.get(value, "dim")
    return f"[{style}]{value}[/]"
