"""What the routing policy would decide for a message now, without sending or storing anything: the same
facts and the same ``decide_channel`` that ``accept_outbound`` uses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import LeadlineConfig
from leadline.domain.phones import to_e164
from leadline.domain.routing import LeadThreads, RoutingDecision, decide_channel
from leadline.domain.window import window_is_open
from leadline.routing.facts import RoutingFacts, routing_facts
from leadline.store import queries


@dataclass(frozen=True, slots=True)
class Explanation:
    to: str
    lead_id: str | None
    """None when leadline does not know the number yet."""
    decision: RoutingDecision
    window_open: bool
    """Whether a free-form message could go on the chosen channel (else it needs a template)."""


async def explain_route(
    conn: AsyncConnection,
    config: LeadlineConfig,
    *,
    to: str,
    now: datetime,
    channel: str | None = None,
    template: tuple[str, str] | None = None,
) -> Explanation:
    """``template``: (name, language). Raises InvalidPhoneNumber, or NoRoute as sending would."""
    number = to_e164(to)
    lead = await queries.lead_for_phone(conn, number)
    if lead is None:
        base = await routing_facts(conn, config, "", now)
        facts = RoutingFacts(base.channels, LeadThreads(), base.flags, base.drain_age)
    else:
        facts = await routing_facts(conn, config, lead["id"], now)
    approved = None
    if template is not None:
        from leadline.templates.service import channels_with_approved

        approved = frozenset(await channels_with_approved(conn, *template))
    decision = decide_channel(
        to=number,
        channels=facts.channels,
        explicit=channel,
        threads=facts.threads,
        flags=facts.flags,
        drain_age=facts.drain_age,
        now=now,
        approved=approved,
    )
    window_open = window_is_open(facts.threads.last_inbound.get(decision.channel), now)
    return Explanation(number, None if lead is None else lead["id"], decision, window_open)
