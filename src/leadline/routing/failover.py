"""Failover of queued messages off a channel whose circuit is open, held messages, and probes.

When the send path meets an open circuit (before sending, or because this send's error opened it), the
queued message goes back through the routing policy with the dead channel passed over:

- a template moves to the channel the policy picks among those where it is approved, re-rendered there;
- a free-form message (text, media) moves as it is only to a channel where the customer's window is open.
  Otherwise, by ``routing.free_form_on_failover``: ``template`` converts it to the configured
  ``reengagement_template`` on a healthy channel; ``hold`` keeps it (status ``held``), listed by
  ``GET /v1/held`` and ``leadline held``;
- when no channel can take it, it is held.

Every move, conversion and hold is one transaction with its timeline entry and its next job; nothing is
dropped: a message ends sent, failed with a reason, or held and listed. Held messages go back to the
queue (:func:`release_held`) when their channel's circuit closes, or by hand. While messages are held on
an open channel, a probe job (:data:`PROBE_JOB`) releases the oldest one when the probe is due: its send
is the probe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import LeadlineConfig
from leadline.domain.ids import new_id
from leadline.domain.messages import DeliveryStatus
from leadline.domain.routing import ChannelState, NoRoute, RoutingDecision, decide_channel
from leadline.domain.timeline import TimelineKind
from leadline.domain.window import window_is_open
from leadline.metrics import CIRCUIT_OPEN, FAILOVERS, HELD_MESSAGES
from leadline.pipeline.worker import JobHandler, JobRun
from leadline.routing.facts import routing_facts
from leadline.routing.health import CLOSED, OPEN, Circuit, all_circuits, get_circuit
from leadline.store import jobs as job_store
from leadline.store.jobs import Job
from leadline.store.tables import messages
from leadline.store.timeline import record_timeline

log = structlog.get_logger(__name__)

PROBE_JOB = "channel_probe"

# A literal, not a bound value: only then can the database use the partial index of held messages
# (ix_messages_held), which these queries read instead of every message.
_IS_HELD = messages.c.status == literal_column(f"'{DeliveryStatus.HELD.value}'")


@dataclass(frozen=True, slots=True)
class Moved:
    from_channel: str
    to_channel: str
    converted: bool
    """The free-form body was replaced by the re-engagement template."""


@dataclass(frozen=True, slots=True)
class Held:
    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class Gone:
    """The message was no longer queued (another worker, or an operator, got there first)."""


FailoverOutcome = Moved | Held | Gone


def count_failover(outcome: FailoverOutcome) -> None:
    """Count a committed move in ``leadline_failovers_total``."""
    if isinstance(outcome, Moved):
        FAILOVERS.labels(**{"from": outcome.from_channel, "to": outcome.to_channel}).inc()


# --------------------------------------------------------------------------------------------
# Moving, converting or holding one queued message


async def fail_over(
    conn: AsyncConnection,
    config: LeadlineConfig,
    message: Any,
    *,
    circuit: Circuit,
    now: datetime,
    error_code: str | None = None,
    error_message: str | None = None,
) -> FailoverOutcome:
    """Move the queued ``message`` (a ``messages`` row) off its channel, whose ``circuit`` is open, or hold it.

    In ``conn``'s transaction: the message's new channel and content (or its ``held`` state), a timeline
    entry, and a fresh send job (moved) or none (held). The caller finishes its own job in the same
    transaction. ``error_code``/``error_message``: the error that found the channel down, if a send did
    (else the circuit's last error is cited).
    """
    code = error_code or circuit.last_error_code or "circuit_open"
    why = error_message or circuit.last_error_message or "circuit open"
    content: dict[str, Any] = dict(message.content)
    facts = await routing_facts(conn, config, message.lead_id, now)
    # The channel just failed here, whatever a clock further on would say about its probe.
    channels = [ChannelState(s.name, s.healthy and s.name != message.channel) for s in facts.channels]
    windows = facts.threads.last_inbound

    def decide(approved: frozenset[str] | None) -> RoutingDecision:
        return decide_channel(
            to=content["to"],
            channels=channels,
            explicit=None,
            threads=facts.threads,
            flags=facts.flags,
            drain_age=facts.drain_age,
            now=now,
            approved=approved,
        )

    healthy = [s.name for s in channels if s.healthy]
    try:
        if content["type"] == "template":
            approved = frozenset(await _approved(conn, content["name"], content["language"]))
            decision = decide(approved)
            if decision.channel == message.channel:
                raise NoRoute("no_healthy_channel", "no other channel")
            return await _move_template(conn, config, message, content, decision, code, why, now)
        decision = decide(None)
        target = decision.channel if window_is_open(windows.get(decision.channel), now) else None
        if target is None:
            open_windows = sorted(
                (at, name) for name, at in windows.items() if name in healthy and window_is_open(at, now)
            )
            if open_windows:
                target = open_windows[-1][1]
                decision = RoutingDecision(target, "failover", decision.passed_over)
        if target is not None and target != message.channel:
            return await _move(conn, config, message, content, decision, code, why, now, converted=None)
        routing = config.settings.routing
        if routing.free_form_on_failover == "template" and routing.reengagement_template is not None:
            template = routing.reengagement_template
            decision = decide(frozenset(await _approved(conn, template.name, template.language)))
            if decision.channel != message.channel:
                return await _convert(conn, config, message, content, decision, code, why, now)
            raise NoRoute("no_healthy_channel", "no other channel")
        reason = f"the customer's window is open only on {message.channel}, whose circuit is open ({code} {why})"
        return await hold(conn, message, reason=reason, error_code=code, now=now)
    except NoRoute as exc:
        reason = f"no healthy channel can take it ({exc.message}); {message.channel}: {code} {why}"
        return await hold(conn, message, reason=reason, error_code=code, now=now)
    except _CannotRender as exc:
        reason = f"could not re-render the template for another channel: {exc}"
        return await hold(conn, message, reason=reason, error_code=code, now=now)


class _CannotRender(Exception):
    pass


async def _approved(conn: AsyncConnection, name: str, language: str) -> set[str]:
    from leadline.templates.service import channels_with_approved

    return await channels_with_approved(conn, name, language)


async def _prepared(
    conn: AsyncConnection, config: LeadlineConfig, channel: str, name: str, language: str, variables: Any
) -> dict[str, Any]:
    from leadline.templates.service import TemplateError, prepare_template_send

    try:
        prepared = await prepare_template_send(
            conn, channel=config.channel(channel), name=name, language=language, variables=variables
        )
    except TemplateError as exc:
        raise _CannotRender(f"{exc.code}: {exc.message}") from None
    return {
        "type": "template",
        "template": asdict(prepared.send),
        "rendered_text": prepared.rendered_text,
        "name": name,
        "language": language,
        "variables": variables,
    }


async def _move_template(
    conn: AsyncConnection,
    config: LeadlineConfig,
    message: Any,
    content: dict[str, Any],
    decision: RoutingDecision,
    code: str,
    why: str,
    now: datetime,
) -> FailoverOutcome:
    if "variables" not in content:
        raise _CannotRender("the message was accepted without its template variables recorded")
    rendered = await _prepared(
        conn, config, decision.channel, content["name"], content["language"], content["variables"]
    )
    return await _move(conn, config, message, content | rendered, decision, code, why, now, converted=None)


async def _convert(
    conn: AsyncConnection,
    config: LeadlineConfig,
    message: Any,
    content: dict[str, Any],
    decision: RoutingDecision,
    code: str,
    why: str,
    now: datetime,
) -> FailoverOutcome:
    template = config.settings.routing.reengagement_template
    assert template is not None
    variables: Mapping[str, str] | Sequence[str] = template.variables
    rendered = await _prepared(
        conn,
        config,
        decision.channel,
        template.name,
        template.language,
        dict(variables) if isinstance(variables, Mapping) else list(variables),
    )
    original = {k: content[k] for k in ("type", "text", "kind", "url", "caption", "filename") if k in content}
    converted = {k: v for k, v in content.items() if k not in original and k not in ("preview_url", "fallback")}
    converted |= rendered | {"converted_from": original}
    return await _move(conn, config, message, converted, decision, code, why, now, converted=template.name)


async def _move(
    conn: AsyncConnection,
    config: LeadlineConfig,
    message: Any,
    content: dict[str, Any],
    decision: RoutingDecision,
    code: str,
    why: str,
    now: datetime,
    *,
    converted: str | None,
) -> FailoverOutcome:
    to = config.channel(decision.channel)
    record = {
        "from": message.channel,
        "to": to.name,
        "reason": decision.reason,
        "error_code": code,
        "at": now.isoformat(),
    }
    if converted is not None:
        record["converted_to_template"] = converted
    content = dict(content)
    content["reply_to"] = None  # a provider id on the old channel means nothing on another number
    content["routing"] = {"channel": to.name, "reason": decision.reason, "passed_over": list(decision.passed_over)}
    content["failovers"] = [*content.get("failovers", []), record]
    fallback = content.pop("fallback", None)
    if fallback is not None and content["type"] != "template" and "variables" in fallback:
        # The window on the new channel is open now; without a fallback there, a later closing fails visibly.
        with contextlib.suppress(_CannotRender):
            content["fallback"] = await _prepared(
                conn, config, to.name, fallback["name"], fallback["language"], fallback["variables"]
            )
    kind = content["kind"] if content["type"] == "media" else content["type"]
    text = content.get("text") or content.get("caption") or content.get("rendered_text")
    result = await conn.execute(
        update(messages)
        .where(messages.c.id == message.id, messages.c.status == DeliveryStatus.QUEUED.value)
        .values(channel=to.name, provider=to.provider, content=content, kind=kind, text=text)
        .returning(messages.c.id)
    )
    if result.first() is None:
        return Gone()
    summary = f"failover {message.channel} → {to.name}: {code} {why}"
    if converted is not None:
        summary += f" (converted to template {converted}: the customer's window is open only on {message.channel})"
    await record_timeline(
        conn,
        [
            {
                "lead_id": message.lead_id,
                "kind": TimelineKind.ROUTING.value,
                "message_id": message.id,
                "channel": to.name,
                "summary": summary[:500],
                "data": record,
                "occurred_at": now,
                "dedupe_key": f"failover:{message.id}:{len(content['failovers'])}:{new_id('f')}",
            }
        ],
        now=now,
    )
    await _enqueue_send(conn, message.id, message.lead_id, now)
    log.warning(
        "message_failed_over",
        message_id=message.id,
        from_channel=message.channel,
        to_channel=to.name,
        reason=decision.reason,
        error_code=code,
        converted_to=converted,
    )
    return Moved(message.channel, to.name, converted is not None)


async def hold(conn: AsyncConnection, message: Any, *, reason: str, error_code: str, now: datetime) -> FailoverOutcome:
    """Keep the queued ``message`` on its channel as ``held``, with ``reason``, until it is released."""
    content = dict(message.content) | {
        "held": {"reason": reason, "channel": message.channel, "error_code": error_code, "at": now.isoformat()}
    }
    result = await conn.execute(
        update(messages)
        .where(messages.c.id == message.id, messages.c.status == DeliveryStatus.QUEUED.value)
        .values(
            status=DeliveryStatus.HELD.value,
            status_rank=DeliveryStatus.HELD.rank,
            error_code=error_code[:32],
            error_title=reason[:500],
            content=content,
        )
        .returning(messages.c.id)
    )
    if result.first() is None:
        return Gone()
    await record_timeline(
        conn,
        [
            {
                "lead_id": message.lead_id,
                "kind": TimelineKind.STATUS.value,
                "message_id": message.id,
                "channel": message.channel,
                "summary": f"held: {reason}"[:500],
                "data": {"status": DeliveryStatus.HELD.value, "reason": reason, "error_code": error_code},
                "occurred_at": now,
                "dedupe_key": f"status:local:{message.id}:held:{new_id('h')}",
            }
        ],
        now=now,
    )
    log.warning("message_held", message_id=message.id, channel=message.channel, reason=reason)
    return Held(message.channel, reason)


async def _enqueue_send(conn: AsyncConnection, message_id: str, lead_id: str, now: datetime) -> None:
    from leadline.pipeline.outbound import SEND_JOB  # the send path imports this module

    await job_store.enqueue(
        conn,
        [
            job_store.new_job(
                SEND_JOB,
                {"message_id": message_id},
                now=now,
                order_key=f"send:{lead_id}",
                dedupe_key=f"send:{message_id}:{new_id('r')}",
            )
        ],
    )


# --------------------------------------------------------------------------------------------
# Held messages: listing and releasing


async def list_held(conn: AsyncConnection, *, channel: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Held messages, oldest first, with why they are held."""
    query = select(messages).where(_IS_HELD).order_by(messages.c.created_at, messages.c.id).limit(limit)
    if channel is not None:
        query = query.where(messages.c.channel == channel)
    held = []
    for row in await conn.execute(query):
        info = row.content.get("held") or {}
        held.append(
            {
                "id": row.id,
                "lead_id": row.lead_id,
                "to": row.content.get("to"),
                "channel": row.channel,
                "kind": row.kind,
                "text": row.text,
                "reason": info.get("reason") or row.error_title,
                "error_code": row.error_code,
                "held_at": datetime.fromisoformat(info["at"]) if "at" in info else None,
                "created_at": row.created_at,
            }
        )
    return held


async def release_held(
    conn: AsyncConnection,
    *,
    now: datetime,
    message_ids: Sequence[str] | None = None,
    channel: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Put held messages back in the queue, each with a fresh send job; returns their ids.

    All of them, or those in ``message_ids``, or those held on ``channel`` (the oldest ``limit`` of them).
    A message whose channel is still down goes through failover again when its job runs.
    """
    chosen = select(messages.c.id).where(_IS_HELD)
    if message_ids is not None:
        chosen = chosen.where(messages.c.id.in_(list(message_ids)))
    if channel is not None:
        chosen = chosen.where(messages.c.channel == channel)
    if limit is not None:
        chosen = chosen.order_by(messages.c.created_at, messages.c.id).limit(limit)
    ids = list((await conn.execute(chosen)).scalars())
    if not ids:
        return []
    result = await conn.execute(
        update(messages)
        .where(messages.c.id.in_(ids), _IS_HELD)
        .values(
            status=DeliveryStatus.QUEUED.value,
            status_rank=DeliveryStatus.QUEUED.rank,
            error_code=None,
            error_title=None,
        )
        .returning(messages.c.id, messages.c.lead_id, messages.c.channel, messages.c.created_at)
    )
    released = sorted(result, key=lambda r: (r.created_at, r.id))
    if not released:
        return []
    await record_timeline(
        conn,
        [
            {
                "lead_id": r.lead_id,
                "kind": TimelineKind.STATUS.value,
                "message_id": r.id,
                "channel": r.channel,
                "summary": "released: back in the queue",
                "data": {"status": DeliveryStatus.QUEUED.value, "released": True},
                "occurred_at": now,
                "dedupe_key": f"status:local:{r.id}:released:{new_id('u')}",
            }
            for r in released
        ],
        now=now,
    )
    for r in released:
        await _enqueue_send(conn, r.id, r.lead_id, now)
    log.info("held_released", count=len(released), channel=channel)
    return [r.id for r in released]


# --------------------------------------------------------------------------------------------
# Probes


async def schedule_probe(conn: AsyncConnection, channel: str, at: datetime | None, now: datetime) -> None:
    """A probe job for ``channel`` at ``at`` (one per channel and time, however many ask)."""
    when = at or now
    await job_store.enqueue(
        conn,
        [
            job_store.new_job(
                PROBE_JOB,
                {"channel": channel},
                now=now,
                run_after=when,
                dedupe_key=f"probe:{channel}:{when.isoformat()}",
            )
        ],
    )


def probe_job_handler(config: LeadlineConfig) -> JobHandler:
    """The probe job: when an open circuit's probe is due and messages are held on it, release the oldest.

    Its send claims the probe (routing.health.claim_probe): accepted, the circuit closes and every message
    held there is released; refused, the circuit re-opens and the message goes through failover again.
    The next probe is scheduled as long as messages stay held, so a probe that ends inconclusive (a
    message-level error) or is lost does not leave them waiting for new traffic.
    """
    every = timedelta(seconds=config.settings.routing.probe_after_seconds)

    async def run_probe(job: Job, run: JobRun) -> None:
        channel = job.payload["channel"]
        now = run.now()
        async with run.db.transaction() as conn:
            circuit = await get_circuit(conn, channel)
            if circuit is not None and circuit.is_open:
                if not circuit.probe_due(now):
                    await schedule_probe(conn, channel, circuit.next_probe_at, now)
                elif await release_held(conn, now=now, channel=channel, limit=1):
                    await schedule_probe(conn, channel, now + every, now)
            await run.finish(conn)

    return run_probe


# --------------------------------------------------------------------------------------------
# What the API, the CLI and the metrics show


async def held_counts(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(messages.c.channel, func.count()).where(_IS_HELD).group_by(messages.c.channel))
    return {channel: count for channel, count in rows}


async def health_report(conn: AsyncConnection, config: LeadlineConfig, now: datetime) -> list[dict[str, Any]]:
    """Every configured channel with its circuit as routing sees it at ``now``, and its held messages."""
    circuits = await all_circuits(conn)
    held = await held_counts(conn)
    report = []
    for channel in config.channels:
        circuit = circuits.get(channel.name)
        state = circuit.display_state(now) if circuit else CLOSED
        report.append(
            {
                "name": channel.name,
                "provider": channel.provider,
                "can_send": channel.can_send,
                "circuit": state,
                "healthy": state != OPEN,
                "consecutive_failures": circuit.consecutive_failures if circuit else 0,
                "last_error_code": circuit.last_error_code if circuit else None,
                "last_error_message": circuit.last_error_message if circuit else None,
                "last_failure_at": circuit.last_failure_at if circuit else None,
                "last_success_at": circuit.last_success_at if circuit else None,
                "opened_at": circuit.opened_at if circuit else None,
                "next_probe_at": circuit.next_probe_at if circuit else None,
                "held": held.get(channel.name, 0),
            }
        )
    return report


async def refresh_gauges(conn: AsyncConnection, config: LeadlineConfig) -> None:
    """Set ``leadline_channel_circuit_open`` and ``leadline_held_messages`` from the database (all processes)."""
    circuits = await all_circuits(conn)
    held = await held_counts(conn)
    for channel in config.channels:
        circuit = circuits.get(channel.name)
        CIRCUIT_OPEN.labels(channel=channel.name).set(1 if circuit is not None and circuit.is_open else 0)
        HELD_MESSAGES.labels(channel=channel.name).set(held.get(channel.name, 0))
