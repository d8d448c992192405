"""What every ``leadline`` subcommand shares: the --config option, loading it, and a database to work on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from leadline.config import ConfigError, LeadlineConfig, config_path, load_config
from leadline.store.db import Database

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file (default: $LEADLINE_CONFIG or ./leadline.toml)")
]
T = TypeVar("T")


def load_config_or_exit(path: Path | None) -> LeadlineConfig:
    """The configuration, or every problem in it printed at its place and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[bold red]{path or config_path()}: the configuration has problems[/]")
        for problem in exc.problems:
            err_console.print(f"  [red]✗[/] {escape(problem)}")
        raise typer.Exit(2) from None


def run_with_database(config: LeadlineConfig, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database, its schema brought up to date first."""

    async def run() -> T:
        db = Database(config.settings.database_url)
        try:
            await db.migrate()
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"
