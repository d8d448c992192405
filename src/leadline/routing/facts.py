"""Gathering what the routing policy (domain.routing) decides on, from the database, on every decision:
flags, circuits and threads are shared by every process, so nothing here is cached in memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import LeadlineConfig
from leadline.domain.routing import ChannelState, Flags, LeadThreads
from leadline.store.tables import (
    channel_health,
    conversation_windows,
    messages,
    routing_overrides,
    routing_state,
)


@dataclass(frozen=True, slots=True)
class RoutingFacts:
    channels: list[ChannelState]
    threads: LeadThreads
    flags: Flags
    drain_age: timedelta


async def current_flags(conn: AsyncConnection, config: LeadlineConfig) -> Flags:
    overrides = {row.match: row.channel for row in await conn.execute(select(routing_overrides))}
    state = (await conn.execute(select(routing_state).where(routing_state.c.id == 1))).first()
    if state is None:
        return Flags(overrides=overrides, default_channel=config.settings.default_channel)
    return Flags(
        overrides=overrides,
        rollout_channel=state.rollout_channel,
        rollout_percent=state.rollout_percent,
        default_channel=state.default_channel or config.settings.default_channel,
    )


async def channel_states(conn: AsyncConnection, config: LeadlineConfig, now: datetime) -> list[ChannelState]:
    """Channels that can send, in configuration order; an open circuit is healthy again once its probe is due."""
    return _channel_states(config, await _health_rows(conn), now)


async def _health_rows(conn: AsyncConnection) -> dict[str, Any]:
    return {row.channel: row for row in await conn.execute(select(channel_health))}


def _channel_states(config: LeadlineConfig, rows: Mapping[str, Any], now: datetime) -> list[ChannelState]:
    states = []
    for channel in config.channels:
        if not channel.can_send:
            continue
        row = rows.get(channel.name)
        healthy = row is None or row.state != "open" or (row.next_probe_at is not None and row.next_probe_at <= now)
        states.append(ChannelState(channel.name, healthy))
    return states


# Built once (building a statement costs more than running it), and one round trip for both: the
# customer's last message per channel (the window) and the lead's last message in either direction.
_THREADS = union_all(
    select(
        literal("window").label("fact"), conversation_windows.c.channel, conversation_windows.c.last_inbound_at
    ).where(conversation_windows.c.lead_id == bindparam("lead_id")),
    select(literal("activity").label("fact"), messages.c.channel, func.max(messages.c.created_at))
    .where(messages.c.lead_id == bindparam("lead_id"))
    .group_by(messages.c.channel),
)


async def lead_threads(conn: AsyncConnection, lead_id: str | None) -> LeadThreads:
    if lead_id is None:  # a customer not seen yet has no threads
        return LeadThreads()
    facts: dict[str, dict[str, datetime]] = {"window": {}, "activity": {}}
    for fact, channel, at in await conn.execute(_THREADS, {"lead_id": lead_id}):
        facts[fact][channel] = at
    return LeadThreads(last_inbound=facts["window"], last_activity=facts["activity"])


@dataclass(frozen=True, slots=True)
class SharedFacts:
    """The facts that are the same for every lead: the flags and the circuits, as read in one transaction.

    Read once for a batch of decisions made in one transaction (the outbox's group commit), where they
    cannot change between one decision and the next.
    """

    health: Mapping[str, Any]
    flags: Flags


async def shared_facts(conn: AsyncConnection, config: LeadlineConfig) -> SharedFacts:
    return SharedFacts(health=await _health_rows(conn), flags=await current_flags(conn, config))


async def routing_facts(
    conn: AsyncConnection,
    config: LeadlineConfig,
    lead_id: str | None,
    now: datetime,
    shared: SharedFacts | None = None,
) -> RoutingFacts:
    """``lead_id``: None for a customer not seen yet. ``shared``: read earlier in ``conn``'s transaction
    (see :class:`SharedFacts`); read here when None."""
    if shared is None:
        shared = await shared_facts(conn, config)
    return RoutingFacts(
        channels=_channel_states(config, shared.health, now),
        threads=await lead_threads(conn, lead_id),
        flags=shared.flags,
        drain_age=timedelta(hours=config.settings.routing.drain_age_hours),
    )
