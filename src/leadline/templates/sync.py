"""Submitting templates to a channel's provider and keeping their approval status current.

- :func:`submit_templates`: concurrent and idempotent; a template the provider has already (from an
  earlier run, or made by hand) is adopted, not created again.
- :func:`sync_channel`: pulls every template of the channel's account, updates statuses and imports
  the ones leadline does not know yet.
- :func:`template_status_notice_handler`: status webhooks (Meta's message_template_status_update)
  as they happen, through the notice job.
- :func:`template_sync_job_handler`: the periodic sync the worker runs, every 15 minutes by default,
  started by the first submission.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import ChannelConfig, LeadlineConfig
from leadline.pipeline.notices import NoticeHandler
from leadline.pipeline.worker import JobHandler, JobRun
from leadline.providers.base import ProviderError
from leadline.store import jobs as job_store
from leadline.store.db import Database
from leadline.store.jobs import Job
from leadline.templates import store
from leadline.templates.definitions import Problem, SourcedDefinition, TemplateDefinition
from leadline.templates.errors import InvalidTemplate
from leadline.templates.providers import (
    TemplateApi,
    channels_sharing_templates,
    open_template_api,
    supports_templates,
    template_status_parser,
)
from leadline.templates.validation import validate_template

log = structlog.get_logger(__name__)

TEMPLATE_STATUS_TOPIC = "message_template_status_update"
TEMPLATE_SYNC_JOB = "template_sync"
DEFAULT_SYNC_INTERVAL = 900.0
SUBMIT_CONCURRENCY = 8

# Meta stamps its webhooks to the second: a report from the same second as the state kept may be the
# newer one, so it is applied.
_REPORT_CLOCK_RESOLUTION = timedelta(seconds=1)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# Definitions


async def define_templates(
    db: Database, definitions: Sequence[SourcedDefinition], *, now: datetime | None = None
) -> list[tuple[TemplateDefinition, bool]]:
    """Validate every definition, then store them all in one transaction; returns each with whether it
    changed. Raises :class:`InvalidTemplate` with every problem of every template, storing nothing."""
    problems = [p for sourced in definitions for p in validate_template(sourced.definition)]
    keys = [(s.definition.name, s.definition.language) for s in definitions]
    for duplicate in sorted({k for k in keys if keys.count(k) > 1}):
        sources = ", ".join(s.source for s in definitions if (s.definition.name, s.definition.language) == duplicate)
        problems.append(
            Problem("(template)", f"is defined more than once: {sources}", f"{duplicate[0]} ({duplicate[1]})")
        )
    if problems:
        raise InvalidTemplate(problems)
    now = now or _utcnow()
    results: list[tuple[TemplateDefinition, bool]] = []
    async with db.transaction() as conn:
        for sourced in definitions:
            _, changed = await store.define_template(conn, sourced.definition, source=sourced.source, now=now)
            results.append((sourced.definition, changed))
    return results


# --------------------------------------------------------------------------------------------
# Submitting


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    template: str
    """``name (language)``."""
    channel: str
    status: str | None = None
    provider_template_id: str | None = None
    created: bool = False
    adopted: bool = False
    error: str | None = None


async def submit_templates(
    db: Database,
    channel: ChannelConfig,
    names: Sequence[str] | None = None,
    *,
    concurrency: int = SUBMIT_CONCURRENCY,
    on_outcome: Callable[[SubmitOutcome], None] | None = None,
    sync_interval: float = DEFAULT_SYNC_INTERVAL,
) -> list[SubmitOutcome]:
    """Submit the stored templates (all, or those named) to ``channel``, ``concurrency`` at a time.

    Each template is recorded as soon as its provider answers, so an interrupted run loses nothing and
    the next one adopts what was created. A failure is reported in its outcome, not raised; the
    periodic sync is scheduled so the approvals are followed to the end.
    """
    async with db.read() as conn:
        stored = await store.list_templates(conn, names)
    outcomes: list[SubmitOutcome] = []
    known = {t.name for t in stored}
    for name in names or []:
        if name not in known:
            outcome = SubmitOutcome(name, channel.name, error="no template of that name is defined")
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    if stored:
        semaphore = asyncio.Semaphore(concurrency)
        async with open_template_api(channel) as api:

            async def one(template: store.StoredTemplate) -> SubmitOutcome:
                async with semaphore:
                    outcome = await submit_template(db, channel, api, template)
                if on_outcome:
                    on_outcome(outcome)
                return outcome

            outcomes += await asyncio.gather(*(one(t) for t in stored))
    async with db.transaction() as conn:
        await schedule_periodic_sync(conn, now=_utcnow(), interval=sync_interval)
    return outcomes


async def submit_template(
    db: Database, channel: ChannelConfig, api: TemplateApi, template: store.StoredTemplate
) -> SubmitOutcome:
    state = template.channels.get(channel.name)
    try:
        submission = await api.submit(template.definition, state.provider_template_id if state else None)
    except ProviderError as exc:
        log.warning("template_submit_failed", template=template.key, channel=channel.name, code=exc.code)
        return SubmitOutcome(template.key, channel.name, error=f"{exc.code}: {exc.message}")
    remote = submission.template
    # What the provider holds is what it approves: an adopted template keeps its own definition.
    submitted = template.definition if submission.created or remote.definition is None else remote.definition
    async with db.transaction() as conn:
        await store.record_channel_state(
            conn,
            template.id,
            channel=channel.name,
            provider=channel.provider,
            remote=remote,
            now=_utcnow(),
            submitted=submitted,
        )
    return SubmitOutcome(
        template.key,
        channel.name,
        status=remote.status,
        provider_template_id=remote.provider_template_id,
        created=submission.created,
        adopted=not submission.created,
    )


# --------------------------------------------------------------------------------------------
# Syncing


@dataclass(slots=True)
class SyncReport:
    channel: str
    updated: int = 0
    imported: list[str] = field(default_factory=list)
    not_importable: list[str] = field(default_factory=list)
    """Templates on the provider in a format leadline does not define (carousels, OTP buttons...)."""
    gone: int = 0
    """Templates leadline had on the channel that the provider no longer lists (now DELETED)."""


async def sync_channel(db: Database, channel: ChannelConfig) -> SyncReport:
    """Pull the statuses of every template of ``channel``'s account and import unknown ones."""
    async with open_template_api(channel) as api:
        remotes = await api.list_templates()
    now = _utcnow()
    report = SyncReport(channel.name)
    async with db.transaction() as conn:
        listed: set[str] = set()
        for remote in remotes:
            listed.add(remote.provider_template_id)
            template = await store.get_template(conn, remote.name, remote.language)
            if template is None:
                if remote.definition is None:
                    report.not_importable.append(f"{remote.name} ({remote.language})")
                    continue
                template_id, _ = await store.define_template(
                    conn, remote.definition, source=f"import:{channel.name}", now=now
                )
                report.imported.append(f"{remote.name} ({remote.language})")
            else:
                template_id = template.id
            await store.record_channel_state(
                conn, template_id, channel=channel.name, provider=channel.provider, remote=remote, now=now
            )
            report.updated += 1
        report.gone = await _mark_gone(conn, channel.name, listed, now)
    return report


async def _mark_gone(conn: AsyncConnection, channel: str, listed: set[str], now: datetime) -> int:
    gone = 0
    for template in await store.list_templates(conn):
        state = template.channels.get(channel)
        if state and state.provider_template_id and state.provider_template_id not in listed:
            gone += await store.apply_status_report(
                conn,
                channels=[channel],
                provider_template_id=state.provider_template_id,
                name=None,
                language=None,
                status="DELETED",
                rejection_reason=None,
                category=None,
                at=now,
            )
    return gone


def template_channels(config: LeadlineConfig) -> list[ChannelConfig]:
    return [c for c in config.channels if supports_templates(c)]


async def sync_all(db: Database, config: LeadlineConfig) -> tuple[list[SyncReport], dict[str, str]]:
    """Sync every channel that has templates; a channel's failure is reported and the others go on."""
    reports: list[SyncReport] = []
    failures: dict[str, str] = {}
    for channel in template_channels(config):
        try:
            reports.append(await sync_channel(db, channel))
        except ProviderError as exc:
            failures[channel.name] = f"{exc.code}: {exc.message}"
            log.warning("template_sync_failed", channel=channel.name, code=exc.code)
    return reports, failures


async def schedule_periodic_sync(
    conn: AsyncConnection, *, now: datetime, interval: float, after_bucket: int | None = None
) -> None:
    """Make sure a sync job is due by the next ``interval`` boundary; callers in the same window share one.

    ``after_bucket`` is the window of the sync that is running, so the next one is strictly later even
    when that sync ran late.
    """
    bucket = max(math.floor(now.timestamp() / interval), after_bucket if after_bucket is not None else -1) + 1
    run_after = datetime.fromtimestamp(bucket * interval, UTC)
    await job_store.enqueue(
        conn,
        [
            job_store.new_job(
                TEMPLATE_SYNC_JOB,
                {"bucket": bucket},
                now=now,
                run_after=run_after,
                dedupe_key=f"template_sync:{bucket}",
            )
        ],
    )


def template_sync_job_handler(config: LeadlineConfig, *, interval: float = DEFAULT_SYNC_INTERVAL) -> JobHandler:
    async def run(job: Job, run: JobRun) -> None:
        _, failures = await sync_all(run.db, config)
        bucket = job.payload.get("bucket")
        async with run.db.transaction() as conn:
            await schedule_periodic_sync(
                conn, now=_utcnow(), interval=interval, after_bucket=bucket if isinstance(bucket, int) else None
            )
            await run.finish(conn)
        if failures:
            log.warning("template_sync_incomplete", failures=failures)

    return run


# --------------------------------------------------------------------------------------------
# Status webhooks


def template_status_notice_handler(config: LeadlineConfig) -> NoticeHandler:
    """Applies a provider's template status notice to every channel sharing the template's account."""

    async def handle(notice: dict[str, Any], run: JobRun) -> None:
        parse = template_status_parser(notice["provider"])
        report = parse(notice["payload"]) if parse else None
        if report is None:
            return
        own = [notice["channel"]] if notice.get("channel") else []
        channels = channels_sharing_templates(own, config.channels, notice.get("account_id"))
        occurred_at: datetime = notice["occurred_at"]
        async with run.db.transaction() as conn:
            changed = await store.apply_status_report(
                conn,
                channels=channels,
                provider_template_id=report.provider_template_id,
                name=report.name,
                language=report.language,
                status=report.status,
                rejection_reason=report.rejection_reason,
                category=report.category,
                at=occurred_at + _REPORT_CLOCK_RESOLUTION,
            )
            await run.finish(conn)
        log.info(
            "template_status_update",
            template=report.name,
            language=report.language,
            status=report.status,
            channels=channels,
            changed=changed,
        )

    return handle
