"""The routing flags (per-number and prefix overrides, the rollout, the default channel): read and changed
here, each change in one transaction with its ``routing_audit`` row (who, what, before, after).

Every process reads the flags from the database on every decision (routing.facts), so a change is in
force everywhere as soon as its transaction commits. The API (/v1/routing) and the CLI (``leadline
routing``) both call these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import LeadlineConfig
from leadline.domain.phones import InvalidPhoneNumber, to_e164
from leadline.store.db import Database, insert_ignoring_duplicates
from leadline.store.tables import routing_audit, routing_overrides, routing_state

PREFIX = re.compile(r"\+[1-9][0-9]{0,5}")
"""A prefix override: ``+`` and 1 to 6 digits, the first not 0 (``+34``, ``+5255``). Exact numbers are longer."""


class InvalidFlag(Exception):
    """The change asked for is not valid; nothing was written."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownOverride(Exception):
    def __init__(self, match: str):
        super().__init__(f"no routing override for {match!r}")
        self.match = match
        self.message = str(self)


@dataclass(frozen=True, slots=True)
class Override:
    match: str
    channel: str
    kind: str
    """``number`` or ``prefix``."""
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RoutingFlags:
    overrides: list[Override]
    rollout_channel: str | None
    rollout_percent: float
    default_channel: str | None
    """In force: the flag if set, else the configuration's ``default_channel``."""
    default_channel_flag: str | None
    """What the flag says (None: the configuration decides)."""
    cutover_from: str | None
    cutover_to: str | None
    cutover_started_at: datetime | None
    cutover_finished_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    actor: str
    action: str
    before: Any
    after: Any
    occurred_at: datetime


def override_kind(match: str) -> str:
    return "prefix" if PREFIX.fullmatch(match) else "number"


def normalise_match(raw: str) -> str:
    """A prefix (``+34``) as it is; anything else must be a phone number, stored in E.164."""
    text = raw.strip()
    if PREFIX.fullmatch(text):
        return text
    try:
        return to_e164(text)
    except InvalidPhoneNumber:
        raise InvalidFlag(
            "invalid_match",
            f"{raw!r} is neither a phone number in international form nor a prefix"
            " ('+' and 1 to 6 digits, the first not 0)",
        ) from None


def _sending_channel(config: LeadlineConfig, name: str) -> str:
    channel = next((c for c in config.channels if c.name == name), None)
    if channel is None:
        known = ", ".join(c.name for c in config.channels)
        raise InvalidFlag("unknown_channel", f"no channel named {name!r} (configured: {known})")
    if not channel.can_send:
        raise InvalidFlag("channel_cannot_send", f"channel {name!r} has no credentials to send")
    return name


async def _audit(conn: AsyncConnection, actor: str, action: str, before: Any, after: Any, now: datetime) -> None:
    await conn.execute(
        routing_audit.insert().values(actor=actor, action=action, before=before, after=after, occurred_at=now)
    )


async def _locked_state(conn: AsyncConnection, now: datetime) -> Any:
    """The single routing_state row, created if missing, locked until the transaction ends."""
    await insert_ignoring_duplicates(
        conn, routing_state, [{"id": 1, "rollout_percent": 0.0, "updated_at": now}], conflict_columns=["id"]
    )
    return (await conn.execute(select(routing_state).where(routing_state.c.id == 1).with_for_update())).one()


# --------------------------------------------------------------------------------------------
# Reading


async def read_flags(conn: AsyncConnection, config: LeadlineConfig) -> RoutingFlags:
    rows = await conn.execute(select(routing_overrides).order_by(routing_overrides.c.match))
    overrides = [Override(r.match, r.channel, override_kind(r.match), r.created_at) for r in rows]
    state = (await conn.execute(select(routing_state).where(routing_state.c.id == 1))).first()
    configured = config.settings.default_channel
    if state is None:
        return RoutingFlags(overrides, None, 0.0, configured, None, None, None, None, None, None)
    return RoutingFlags(
        overrides=overrides,
        rollout_channel=state.rollout_channel,
        rollout_percent=state.rollout_percent,
        default_channel=state.default_channel or configured,
        default_channel_flag=state.default_channel,
        cutover_from=state.cutover_from,
        cutover_to=state.cutover_to,
        cutover_started_at=state.cutover_started_at,
        cutover_finished_at=state.cutover_finished_at,
        updated_at=state.updated_at,
    )


async def list_audit(conn: AsyncConnection, *, limit: int = 50) -> list[AuditEntry]:
    """Newest first."""
    rows = await conn.execute(select(routing_audit).order_by(routing_audit.c.id.desc()).limit(limit))
    return [AuditEntry(r.id, r.actor, r.action, r.before, r.after, r.occurred_at) for r in rows]


# --------------------------------------------------------------------------------------------
# Changing (each in one transaction, with its audit row)


async def set_override(
    db: Database, config: LeadlineConfig, match: str, channel: str, *, actor: str, now: datetime
) -> Override:
    """Send a number (exact) or every number under a prefix through ``channel``."""
    key = normalise_match(match)
    _sending_channel(config, channel)
    async with db.transaction() as conn:
        inserted = await insert_ignoring_duplicates(
            conn,
            routing_overrides,
            [{"match": key, "channel": channel, "created_at": now}],
            conflict_columns=["match"],
            returning="match",
        )
        before = None
        if not inserted:
            row = (
                await conn.execute(select(routing_overrides).where(routing_overrides.c.match == key).with_for_update())
            ).one()
            before = {"match": key, "channel": row.channel}
            await conn.execute(
                update(routing_overrides)
                .where(routing_overrides.c.match == key)
                .values(channel=channel, created_at=now)
            )
        await _audit(conn, actor, "set_override", before, {"match": key, "channel": channel}, now)
    return Override(key, channel, override_kind(key), now)


async def remove_override(db: Database, match: str, *, actor: str, now: datetime) -> Override:
    """Raises UnknownOverride when there is none for ``match``."""
    key = normalise_match(match)
    async with db.transaction() as conn:
        row = (
            await conn.execute(select(routing_overrides).where(routing_overrides.c.match == key).with_for_update())
        ).first()
        if row is None:
            raise UnknownOverride(key)
        await conn.execute(delete(routing_overrides).where(routing_overrides.c.match == key))
        await _audit(conn, actor, "remove_override", {"match": key, "channel": row.channel}, None, now)
    return Override(key, row.channel, override_kind(key), row.created_at)


async def set_rollout(
    db: Database, config: LeadlineConfig, channel: str, percent: float, *, actor: str, now: datetime
) -> None:
    """Send ``percent`` of numbers (by a hash of the number, so each number stays put) through ``channel``."""
    if not 0 <= percent <= 100:
        raise InvalidFlag("invalid_percent", f"the rollout percent must be between 0 and 100, not {percent}")
    _sending_channel(config, channel)
    async with db.transaction() as conn:
        state = await _locked_state(conn, now)
        before = {"channel": state.rollout_channel, "percent": state.rollout_percent}
        await conn.execute(
            update(routing_state)
            .where(routing_state.c.id == 1)
            .values(rollout_channel=channel, rollout_percent=float(percent), updated_at=now)
        )
        await _audit(conn, actor, "set_rollout", before, {"channel": channel, "percent": float(percent)}, now)


async def set_default_channel(db: Database, config: LeadlineConfig, channel: str, *, actor: str, now: datetime) -> None:
    """Where a number goes when no thread, override or rollout claims it."""
    _sending_channel(config, channel)
    async with db.transaction() as conn:
        state = await _locked_state(conn, now)
        await conn.execute(
            update(routing_state).where(routing_state.c.id == 1).values(default_channel=channel, updated_at=now)
        )
        await _audit(
            conn,
            actor,
            "set_default_channel",
            {"default_channel": state.default_channel},
            {"default_channel": channel},
            now,
        )
