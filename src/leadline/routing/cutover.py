"""Moving a live WhatsApp channel to another provider: plan, start, watch the drain, finish.

- :func:`plan` lists what is not ready on the new channel: templates not approved there, no webhook
  ever received from it, credentials refused by a live call to the provider.
- :func:`start_cutover` (refused while the plan has blockers, unless forced) makes the new channel the
  default in one transaction: new conversations go there at once, in every process, while threads in
  flight keep draining on the old one by the routing policy (open window, or a conversation younger
  than ``routing.drain_age_hours``).
- :func:`cutover_status`: threads still draining on the old channel, messages per channel over the last
  hour, failovers.
- :func:`finish_cutover`: refused while threads are draining, unless forced.

Every change is written to ``routing_audit`` with its actor and the state before and after. Each
function takes ``now``, so a caller (or a test) decides what time it is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import ChannelConfig, LeadlineConfig
from leadline.domain.window import WINDOW
from leadline.providers.base import ProviderError
from leadline.providers.http import new_client_session
from leadline.providers.registry import get_plugin
from leadline.store.db import Database, insert_ignoring_duplicates
from leadline.store.tables import (
    conversation_windows,
    message_statuses,
    messages,
    provider_notices,
    routing_audit,
    routing_state,
    webhook_rejections,
)

__all__ = [
    "Blocker",
    "BlockerKind",
    "ChannelTraffic",
    "CutoverBlocked",
    "CutoverError",
    "CutoverStatus",
    "Drain",
    "Finished",
    "Started",
    "StillDraining",
    "cutover_status",
    "draining_threads",
    "finish_cutover",
    "plan",
    "start",
    "start_cutover",
]

START_ACTION = "cutover_start"
FINISH_ACTION = "cutover_finish"
TRAFFIC_PERIOD = timedelta(hours=1)
CREDENTIAL_CHECK_SECONDS = 10.0


class BlockerKind(enum.StrEnum):
    TEMPLATE_NOT_APPROVED = "template_not_approved"
    NO_WEBHOOK_RECEIVED = "no_webhook_received"
    CREDENTIALS_FAILED = "credentials_failed"


@dataclass(frozen=True, slots=True)
class Blocker:
    kind: BlockerKind
    channel: str
    message: str
    """What is wrong and what to do about it, for the person running the cutover."""
    subject: str | None = None
    """What it is about, where there are several of a kind (a template's ``name (language)``)."""

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind.value, "channel": self.channel, "subject": self.subject, "message": self.message}


class CutoverError(Exception):
    """The request cannot be carried out as asked; nothing was changed."""

    code = "cutover_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class CutoverBlocked(CutoverError):
    code = "cutover_blocked"

    def __init__(self, blockers: list[Blocker]):
        super().__init__(
            f"the cutover is blocked by {len(blockers)} problem(s): "
            + "; ".join(b.message for b in blockers)
            + " (force it to start anyway)"
        )
        self.blockers = blockers


class StillDraining(CutoverError):
    code = "threads_draining"

    def __init__(self, channel: str, drain: Drain):
        when = f", all drained by {drain.drains_at:%Y-%m-%d %H:%M} UTC" if drain.drains_at else ""
        super().__init__(
            f"{drain.count} thread(s) are still draining on {channel}{when}: finish once they have drained "
            "(leadline cutover status), or force it"
        )
        self.drain = drain


# --------------------------------------------------------------------------------------------
# Plan


def _channel(config: LeadlineConfig, name: str) -> ChannelConfig:
    try:
        return config.channel(name)
    except KeyError:
        names = ", ".join(c.name for c in config.channels) or "none"
        raise CutoverError(f"no channel named {name!r} (channels: {names})") from None


def _check_pair(config: LeadlineConfig, from_channel: str, to_channel: str) -> tuple[ChannelConfig, ChannelConfig]:
    old, new = _channel(config, from_channel), _channel(config, to_channel)
    if old.name == new.name:
        raise CutoverError("a cutover needs two different channels")
    return old, new


async def plan(conn: AsyncConnection, config: LeadlineConfig, from_channel: str, to_channel: str) -> list[Blocker]:
    """What stands in the way of moving ``from_channel``'s traffic to ``to_channel``; empty when ready.

    Makes one live, authenticated call to ``to_channel``'s provider. Raises :class:`CutoverError`
    for an unknown channel or the same channel twice.
    """
    _, new = _check_pair(config, from_channel, to_channel)
    blockers = await _unapproved_templates(conn, new)
    if not await _webhook_ever_received(conn, new.name):
        blockers.append(await _no_webhook_blocker(conn, new))
    failure = await _credentials_failure(new)
    if failure is not None:
        blockers.append(Blocker(BlockerKind.CREDENTIALS_FAILED, new.name, failure))
    return blockers


async def _unapproved_templates(conn: AsyncConnection, channel: ChannelConfig) -> list[Blocker]:
    from leadline.templates import store
    from leadline.templates.providers import APPROVED, NOT_SUBMITTED, supports_templates

    if not supports_templates(channel):
        return []
    blockers = []
    for template in await store.list_templates(conn):
        state = template.channels.get(channel.name)
        if state is not None and state.status == APPROVED:
            continue
        where = "it was never submitted there" if state is None else f"its status there is {state.status}"
        if state is not None and state.rejection_reason:
            where += f" ({state.rejection_reason})"
        todo = (
            f"leadline templates submit --channel {channel.name} {template.name}"
            if state is None or state.status == NOT_SUBMITTED
            else "wait for the provider's decision, or fix and resubmit it"
        )
        blockers.append(
            Blocker(
                BlockerKind.TEMPLATE_NOT_APPROVED,
                channel.name,
                f"template {template.key} is not approved on {channel.name}: {where}; {todo}",
                subject=template.key,
            )
        )
    return blockers


async def _webhook_ever_received(conn: AsyncConnection, channel: str) -> bool:
    """A message from a customer, a status report or a provider notice ever recorded for ``channel``."""
    inbound = exists().where(messages.c.channel == channel, messages.c.direction == "in")
    status = exists().where(
        message_statuses.c.provider == messages.c.provider,
        message_statuses.c.provider_message_id == messages.c.provider_message_id,
        messages.c.channel == channel,
    )
    notice = exists().where(provider_notices.c.channel == channel)
    row = (await conn.execute(select(inbound.label("i"), status.label("s"), notice.label("n")))).one()
    return bool(row.i or row.s or row.n)


async def _no_webhook_blocker(conn: AsyncConnection, channel: ChannelConfig) -> Blocker:
    rejected = (
        await conn.execute(
            select(func.count(), func.max(webhook_rejections.c.occurred_at)).where(
                webhook_rejections.c.channel == channel.name
            )
        )
    ).one()
    message = (
        f"no webhook from {channel.name} has ever reached leadline: point the provider's webhook "
        f"(/webhooks/{channel.provider}) at leadline and send a test message to {channel.business_number}"
    )
    if rejected[0]:
        last_code = (
            await conn.execute(
                select(webhook_rejections.c.code)
                .where(webhook_rejections.c.channel == channel.name)
                .order_by(webhook_rejections.c.id.desc())
                .limit(1)
            )
        ).scalar_one()
        message += f"; {rejected[0]} were rejected (last: {last_code} at {rejected[1].isoformat()}), check its secret"
    return Blocker(BlockerKind.NO_WEBHOOK_RECEIVED, channel.name, message)


async def _credentials_failure(channel: ChannelConfig) -> str | None:
    """None when the provider accepts the channel's credentials; else why not."""
    plugin = get_plugin(channel.provider)
    if plugin is None or plugin.check_credentials is None:
        return f"leadline cannot check {channel.provider} credentials live; check {channel.name} by hand"
    session = new_client_session(timeout_seconds=CREDENTIAL_CHECK_SECONDS, limit=1)
    try:
        await plugin.check_credentials(channel, session)
    except ProviderError as error:
        status = f", HTTP {error.http_status}" if error.http_status else ""
        return f"{channel.provider} refused the credentials of {channel.name} ({error.code}{status}: {error.message})"
    finally:
        await session.close()
    return None


# --------------------------------------------------------------------------------------------
# State and audit


_STATE_FIELDS = (
    "default_channel",
    "rollout_channel",
    "rollout_percent",
    "cutover_from",
    "cutover_to",
    "cutover_started_at",
    "cutover_finished_at",
)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def _locked_state(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
    """The routing_state row (made if missing), locked for the rest of the transaction on PostgreSQL."""
    await insert_ignoring_duplicates(
        conn, routing_state, [{"id": 1, "rollout_percent": 0.0, "updated_at": now}], conflict_columns=["id"]
    )
    row = (await conn.execute(select(routing_state).where(routing_state.c.id == 1).with_for_update())).one()
    return {name: row._mapping[name] for name in _STATE_FIELDS}


async def _audit(
    conn: AsyncConnection, actor: str, action: str, before: Mapping[str, Any], after: Mapping[str, Any], now: datetime
) -> None:
    await conn.execute(
        routing_audit.insert().values(
            actor=actor,
            action=action,
            before={k: _json_value(v) for k, v in before.items()},
            after={k: _json_value(v) for k, v in after.items()},
            occurred_at=now,
        )
    )


# --------------------------------------------------------------------------------------------
# Draining


@dataclass(frozen=True, slots=True)
class Drain:
    """Threads still in flight on a channel: the routing policy keeps their replies there."""

    count: int
    oldest_last_message_at: datetime | None
    """The least recent last message among them (the next to drain)."""
    drains_at: datetime | None
    """When the last of them has both its window closed and its last message older than the drain age."""

    def remaining(self, now: datetime) -> timedelta:
        return max(self.drains_at - now, timedelta(0)) if self.drains_at else timedelta(0)


async def draining_threads(conn: AsyncConnection, channel: str, *, drain_age: timedelta, now: datetime) -> Drain:
    """Leads whose window on ``channel`` is open, or whose last message there is younger than ``drain_age``
    (what :func:`leadline.domain.routing.decide_channel` calls a thread in flight)."""
    activity = (
        select(messages.c.lead_id, func.max(messages.c.created_at).label("last_at"))
        .where(messages.c.channel == channel)
        .group_by(messages.c.lead_id)
        .subquery()
    )
    window = conversation_windows.c.last_inbound_at
    query = (
        select(func.count(), func.min(activity.c.last_at), func.max(activity.c.last_at), func.max(window))
        .select_from(
            activity.outerjoin(
                conversation_windows,
                and_(conversation_windows.c.lead_id == activity.c.lead_id, conversation_windows.c.channel == channel),
            )
        )
        .where(or_(activity.c.last_at > now - drain_age, window > now - WINDOW))
    )
    count, oldest, newest, last_inbound = (await conn.execute(query)).one()
    if not count:
        return Drain(0, None, None)
    ends = [at for at in (newest and newest + drain_age, last_inbound and last_inbound + WINDOW) if at is not None]
    return Drain(int(count), oldest, max(ends) if ends else None)


# --------------------------------------------------------------------------------------------
# Start


@dataclass(frozen=True, slots=True)
class Started:
    from_channel: str
    to_channel: str
    started_at: datetime
    draining: Drain
    """What was in flight on the old channel when the cutover started."""
    already: bool = False
    """The same cutover was already in progress; nothing changed."""
    forced_past: list[Blocker] = field(default_factory=list)


async def start(
    conn: AsyncConnection,
    config: LeadlineConfig,
    from_channel: str,
    to_channel: str,
    *,
    actor: str,
    now: datetime,
    forced_past: list[Blocker] | None = None,
) -> Started:
    """In ``conn``'s transaction: ``to_channel`` becomes the default channel, any rollout is cleared, the
    cutover is recorded as started, and all of it is audited. Threads in flight stay on ``from_channel``
    by the routing policy. Starting the same cutover again changes nothing; starting another one (a
    rollback, ``B`` to ``A``) replaces an unfinished one."""
    _check_pair(config, from_channel, to_channel)
    before = await _locked_state(conn, now)
    drain_age = timedelta(hours=config.settings.routing.drain_age_hours)
    draining = await draining_threads(conn, from_channel, drain_age=drain_age, now=now)
    if (
        before["cutover_from"] == from_channel
        and before["cutover_to"] == to_channel
        and before["cutover_started_at"] is not None
        and before["cutover_finished_at"] is None
        and before["default_channel"] == to_channel
    ):
        return Started(from_channel, to_channel, before["cutover_started_at"], draining, already=True)
    after = before | {
        "default_channel": to_channel,
        "rollout_channel": None,
        "rollout_percent": 0.0,
        "cutover_from": from_channel,
        "cutover_to": to_channel,
        "cutover_started_at": now,
        "cutover_finished_at": None,
    }
    await conn.execute(
        update(routing_state)
        .where(routing_state.c.id == 1)
        .values(**{k: after[k] for k in _STATE_FIELDS}, updated_at=now)
    )
    extra: dict[str, Any] = {"draining_at_start": draining.count}
    if forced_past:
        extra["forced_past"] = [b.to_json() for b in forced_past]
    await _audit(conn, actor, START_ACTION, before, after | extra, now)
    return Started(from_channel, to_channel, now, draining, forced_past=list(forced_past or []))


async def start_cutover(
    db: Database,
    config: LeadlineConfig,
    from_channel: str,
    to_channel: str,
    *,
    actor: str,
    now: datetime,
    force: bool = False,
) -> Started:
    """:func:`plan`, then :func:`start` in its own transaction. Raises :class:`CutoverBlocked` while the
    plan has blockers, unless ``force`` (the blockers are then written to the audit row)."""
    async with db.read() as conn:
        blockers = await plan(conn, config, from_channel, to_channel)
    if blockers and not force:
        raise CutoverBlocked(blockers)
    async with db.transaction() as conn:
        return await start(conn, config, from_channel, to_channel, actor=actor, now=now, forced_past=blockers)


# --------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True, slots=True)
class ChannelTraffic:
    channel: str
    inbound: int = 0
    outbound: int = 0
    failovers: int = 0
    """Outbound messages routed here because the channel they would have taken was down."""


@dataclass(frozen=True, slots=True)
class CutoverStatus:
    from_channel: str | None
    to_channel: str | None
    default_channel: str | None
    started_at: datetime | None
    finished_at: datetime | None
    draining: Drain
    """Threads still in flight on ``from_channel``."""
    draining_at_start: int
    traffic: list[ChannelTraffic]
    """Messages per channel over the last hour."""
    failovers_since_start: int
    now: datetime

    @property
    def in_progress(self) -> bool:
        return self.started_at is not None and self.finished_at is None

    @property
    def drained(self) -> int:
        """Threads that have drained since the start (for a progress bar out of ``total``)."""
        return max(self.total - self.draining.count, 0)

    @property
    def total(self) -> int:
        return max(self.draining_at_start, self.draining.count)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_channel,
            "to": self.to_channel,
            "default_channel": self.default_channel,
            "in_progress": self.in_progress,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "draining": {
                "count": self.draining.count,
                "at_start": self.draining_at_start,
                "drained": self.drained,
                "oldest_last_message_at": self.draining.oldest_last_message_at,
                "drains_at": self.draining.drains_at,
                "seconds_until_drained": self.draining.remaining(self.now).total_seconds(),
            },
            "last_hour": [
                {"channel": t.channel, "in": t.inbound, "out": t.outbound, "failovers": t.failovers}
                for t in self.traffic
            ],
            "failovers_since_start": self.failovers_since_start,
            "now": self.now,
        }


def _failover() -> Any:
    return messages.c.content["routing"]["reason"].as_string() == "failover"


async def _traffic(conn: AsyncConnection, config: LeadlineConfig, since: datetime) -> list[ChannelTraffic]:
    counts: dict[str, dict[str, int]] = {c.name: {} for c in config.channels}
    rows = await conn.execute(
        select(messages.c.channel, messages.c.direction, func.count())
        .where(messages.c.created_at >= since)
        .group_by(messages.c.channel, messages.c.direction)
    )
    for channel, direction, count in rows:
        counts.setdefault(channel, {})[direction] = int(count)
    failovers = await conn.execute(
        select(messages.c.channel, func.count())
        .where(messages.c.created_at >= since, messages.c.direction == "out", _failover())
        .group_by(messages.c.channel)
    )
    for channel, count in failovers:
        counts.setdefault(channel, {})["failover"] = int(count)
    return [ChannelTraffic(name, c.get("in", 0), c.get("out", 0), c.get("failover", 0)) for name, c in counts.items()]


async def cutover_status(conn: AsyncConnection, config: LeadlineConfig, *, now: datetime) -> CutoverStatus:
    """The last cutover (in progress or finished) as it stands at ``now``."""
    row = (await conn.execute(select(routing_state).where(routing_state.c.id == 1))).first()
    state = {name: row._mapping[name] for name in _STATE_FIELDS} if row else dict.fromkeys(_STATE_FIELDS)
    drain_age = timedelta(hours=config.settings.routing.drain_age_hours)
    from_channel = state["cutover_from"]
    draining = (
        await draining_threads(conn, from_channel, drain_age=drain_age, now=now)
        if from_channel
        else Drain(0, None, None)
    )
    at_start = 0
    failovers = 0
    if state["cutover_started_at"] is not None:
        audited = (
            await conn.execute(
                select(routing_audit.c.after)
                .where(routing_audit.c.action == START_ACTION)
                .order_by(routing_audit.c.id.desc())
                .limit(1)
            )
        ).scalar()
        at_start = int((audited or {}).get("draining_at_start", 0))
        failovers = int(
            (
                await conn.execute(
                    select(func.count()).where(
                        messages.c.created_at >= state["cutover_started_at"], messages.c.direction == "out", _failover()
                    )
                )
            ).scalar_one()
        )
    return CutoverStatus(
        from_channel=from_channel,
        to_channel=state["cutover_to"],
        default_channel=state["default_channel"] or config.settings.default_channel,
        started_at=state["cutover_started_at"],
        finished_at=state["cutover_finished_at"],
        draining=draining,
        draining_at_start=at_start,
        traffic=await _traffic(conn, config, now - TRAFFIC_PERIOD),
        failovers_since_start=failovers,
        now=now,
    )


# --------------------------------------------------------------------------------------------
# Finish


@dataclass(frozen=True, slots=True)
class Finished:
    from_channel: str
    to_channel: str
    finished_at: datetime
    draining: Drain
    """What was still in flight on the old channel (non-empty only when forced)."""


async def finish_cutover(
    conn: AsyncConnection, config: LeadlineConfig, *, actor: str, now: datetime, force: bool = False
) -> Finished:
    """In ``conn``'s transaction: the cutover in progress is finished and audited. Raises
    :class:`StillDraining` while threads are in flight on the old channel, unless ``force``."""
    before = await _locked_state(conn, now)
    if before["cutover_started_at"] is None or before["cutover_finished_at"] is not None:
        raise CutoverError("no cutover is in progress (leadline cutover start --from A --to B)")
    from_channel, to_channel = before["cutover_from"], before["cutover_to"]
    drain_age = timedelta(hours=config.settings.routing.drain_age_hours)
    draining = await draining_threads(conn, from_channel, drain_age=drain_age, now=now)
    if draining.count and not force:
        raise StillDraining(from_channel, draining)
    after = before | {"cutover_finished_at": now}
    await conn.execute(
        update(routing_state).where(routing_state.c.id == 1).values(cutover_finished_at=now, updated_at=now)
    )
    await _audit(
        conn, actor, FINISH_ACTION, before, after | {"draining_at_finish": draining.count, "forced": force}, now
    )
    return Finished(from_channel, to_channel, now, draining)
