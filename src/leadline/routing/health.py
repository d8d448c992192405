"""Each channel's circuit breaker, kept in the ``channel_health`` row so that every process sees one state.

- ``closed``: the channel sends. Transient outages (5xx, timeouts, refused connections) are counted;
  ``RoutingConfig.failure_threshold`` of them in a row open the circuit.
- ``open``: an account-level failure (payment, account locked, token expired: the provider's
  CHANNEL_FAILURE class) opens it at once. The routing policy passes the channel over until
  ``next_probe_at``.
- half-open: ``open`` with ``next_probe_at`` passed. One sender claims the probe (:func:`claim_probe`,
  which also moves ``next_probe_at`` on, so nobody else probes meanwhile); a success closes the circuit,
  a failure re-opens it with a new ``next_probe_at``.

Rate limits (130429, 131056, 63018, 20429...) say the channel is alive and busy: they never count.
Every change is one UPDATE whose new values are computed from the row it locks, so concurrent workers in
any number of processes cannot lose an opening (there is no read-modify-write in Python).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, case, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import RoutingConfig
from leadline.metrics import CIRCUIT_CLOSINGS, CIRCUIT_OPENINGS
from leadline.providers.base import ErrorClass, ProviderError
from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import channel_health

log = structlog.get_logger(__name__)

CLOSED = "closed"
OPEN = "open"


class FailureKind(enum.StrEnum):
    ACCOUNT = "account"
    """The provider refuses the channel itself (CHANNEL_FAILURE): opens the circuit at once."""
    OUTAGE = "outage"
    """The provider is unreachable or failing (5xx, timeout, connection refused): counted toward the threshold."""


def failure_kind(error: ProviderError) -> FailureKind | None:
    """What a send error says about the channel, if anything.

    Decided on the provider layer's class and on HTTP semantics only: a server error or no answer at all
    is an outage; a rate limit (429, or a throttling code answered with 400) and every message-level error
    say nothing against the channel.
    """
    if error.error_class is ErrorClass.CHANNEL_FAILURE:
        return FailureKind.ACCOUNT
    if error.error_class is ErrorClass.RETRY_LATER:
        if error.http_status is None and error.code in ("timeout", "connection_error"):
            return FailureKind.OUTAGE
        if error.http_status is not None and error.http_status >= 500:
            return FailureKind.OUTAGE
    return None


@dataclass(frozen=True, slots=True)
class Circuit:
    channel: str
    state: str
    consecutive_failures: int
    last_error_code: str | None
    last_error_message: str | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    opened_at: datetime | None
    next_probe_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    def probe_due(self, now: datetime) -> bool:
        return self.is_open and (self.next_probe_at is None or self.next_probe_at <= now)

    def display_state(self, now: datetime) -> str:
        """``closed``, ``open`` or ``half_open`` (open, and the next send on it is a probe)."""
        if not self.is_open:
            return CLOSED
        return "half_open" if self.probe_due(now) else OPEN


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    circuit: Circuit
    opened: bool
    """This failure opened a closed circuit (a probe that failed re-opens an open one: not counted)."""


def _circuit(row: Any) -> Circuit:
    return Circuit(
        channel=row.channel,
        state=CLOSED if row.state != OPEN else OPEN,
        consecutive_failures=row.consecutive_failures,
        last_error_code=row.last_error_code,
        last_error_message=row.last_error_message,
        last_failure_at=row.last_failure_at,
        last_success_at=row.last_success_at,
        opened_at=row.opened_at,
        next_probe_at=row.next_probe_at,
    )


async def _ensure_row(conn: AsyncConnection, channel: str, now: datetime) -> None:
    await insert_ignoring_duplicates(
        conn,
        channel_health,
        [{"channel": channel, "state": CLOSED, "consecutive_failures": 0, "updated_at": now}],
        conflict_columns=["channel"],
    )


async def get_circuit(conn: AsyncConnection, channel: str) -> Circuit | None:
    row = (await conn.execute(select(channel_health).where(channel_health.c.channel == channel))).first()
    return None if row is None else _circuit(row)


async def all_circuits(conn: AsyncConnection) -> dict[str, Circuit]:
    return {row.channel: _circuit(row) for row in await conn.execute(select(channel_health))}


async def record_channel_failure(
    conn: AsyncConnection,
    channel: str,
    *,
    kind: FailureKind,
    code: str,
    message: str,
    now: datetime,
    config: RoutingConfig,
) -> FailureOutcome:
    """Count a channel-level failure and open (or re-open) the circuit when it should be.

    Opening sets ``state='open'``, ``opened_at`` (kept while it stays open) and ``next_probe_at = now +
    probe_after_seconds``; a failure while open (a failed probe, or a send that was in flight) only moves
    ``next_probe_at`` on. The UPDATE computes the new state from the row it locks.
    """
    await _ensure_row(conn, channel, now)
    c = channel_health.c
    # Locks the row for this transaction (SQLite's write transaction holds the whole file already), so the
    # state read here is the one the UPDATE below changes: only the failure that really opens it says so.
    prior = (await conn.execute(select(c.state).where(c.channel == channel).with_for_update())).scalar_one()
    failures = c.consecutive_failures + 1
    opens = literal(True) if kind is FailureKind.ACCOUNT else failures >= config.failure_threshold
    will_be_open = or_(c.state == OPEN, opens)
    next_probe = now + timedelta(seconds=config.probe_after_seconds)
    result = await conn.execute(
        update(channel_health)
        .where(c.channel == channel)
        .values(
            consecutive_failures=failures,
            last_error_code=code[:32],
            last_error_message=message[:500],
            last_failure_at=now,
            updated_at=now,
            state=case((will_be_open, OPEN), else_=c.state),
            opened_at=case((and_(c.state != OPEN, opens), now), else_=c.opened_at),
            next_probe_at=case((will_be_open, next_probe), else_=c.next_probe_at),
        )
        .returning(*channel_health.c)
    )
    circuit = _circuit(result.one())
    opened = circuit.is_open and prior != OPEN
    if opened:
        CIRCUIT_OPENINGS.labels(channel=channel).inc()
        log.warning(
            "circuit_opened",
            channel=channel,
            kind=kind.value,
            code=code,
            consecutive_failures=circuit.consecutive_failures,
            next_probe_at=circuit.next_probe_at,
        )
    elif circuit.is_open:
        log.warning("circuit_still_open", channel=channel, code=code, next_probe_at=circuit.next_probe_at)
    return FailureOutcome(circuit, opened)


async def record_channel_success(
    conn: AsyncConnection, channel: str, now: datetime, *, sent_since: datetime | None = None
) -> bool:
    """A send on ``channel`` was accepted: reset the count, and close the circuit if it was open.

    ``sent_since``: when that send began. Only a send known to have begun at or after the channel's latest
    failure closes an open circuit (a probe always did); one that was in flight when the circuit opened, or
    whose start is not given, leaves it open. Returns whether this closed an open circuit.
    """
    await _ensure_row(conn, channel, now)
    c = channel_health.c
    if sent_since is not None:
        closing = await conn.execute(
            update(channel_health)
            .where(
                c.channel == channel,
                c.state == OPEN,
                or_(c.last_failure_at.is_(None), c.last_failure_at <= sent_since),
            )
            .values(
                state=CLOSED,
                consecutive_failures=0,
                last_success_at=now,
                opened_at=None,
                next_probe_at=None,
                updated_at=now,
            )
            .returning(c.channel)
        )
        if closing.first() is not None:
            CIRCUIT_CLOSINGS.labels(channel=channel).inc()
            log.info("circuit_closed", channel=channel)
            return True
    await conn.execute(
        update(channel_health)
        .where(c.channel == channel, c.state != OPEN)
        .values(state=CLOSED, consecutive_failures=0, last_success_at=now, updated_at=now)
    )
    return False


async def claim_probe(conn: AsyncConnection, channel: str, now: datetime, config: RoutingConfig) -> bool:
    """Take the half-open circuit's one probe: true for exactly one caller per ``next_probe_at``.

    The winner's send is the probe; ``next_probe_at`` moves on at once, so the channel reads as open to
    everyone else until the probe's outcome closes or re-opens it (or, if its worker died, until the next
    probe is due).
    """
    c = channel_health.c
    result = await conn.execute(
        update(channel_health)
        .where(c.channel == channel, c.state == OPEN, or_(c.next_probe_at.is_(None), c.next_probe_at <= now))
        .values(next_probe_at=now + timedelta(seconds=config.probe_after_seconds), updated_at=now)
        .returning(c.channel)
    )
    claimed = result.first() is not None
    if claimed:
        log.info("circuit_probe", channel=channel)
    return claimed


async def channel_health_rows(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await conn.execute(select(channel_health).order_by(channel_health.c.channel))]
