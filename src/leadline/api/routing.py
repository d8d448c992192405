"""``/v1/routing``: the routing flags, changed at runtime and audited, and what the policy would decide.

Every change is written with its audit row in one transaction (routing.flags); the actor is the name of
the API key that made it. Every process reads the flags on every decision, so a change is in force
everywhere once this answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from leadline.api.errors import ApiError
from leadline.api.v1 import ServicesDep, require_api_key
from leadline.domain.phones import InvalidPhoneNumber
from leadline.domain.routing import NoRoute
from leadline.routing import flags
from leadline.routing.explain import explain_route
from leadline.routing.facts import channel_states
from leadline.routing.health import channel_health_rows

router = APIRouter(prefix="/v1/routing", tags=["routing"])
ActorDep = Annotated[str, Depends(require_api_key)]


class OverrideOut(BaseModel):
    match: str
    channel: str
    kind: str
    created_at: datetime


class RolloutOut(BaseModel):
    channel: str | None
    percent: float


class CutoverOut(BaseModel):
    from_channel: str | None
    to_channel: str | None
    started_at: datetime | None
    finished_at: datetime | None


class FlagsOut(BaseModel):
    overrides: list[OverrideOut]
    rollout: RolloutOut
    default_channel: str | None
    """In force: the flag if set, else the configuration's."""
    default_channel_flag: str | None
    updated_at: datetime | None


class ChannelOut(BaseModel):
    name: str
    provider: str
    business_number: str
    can_send: bool
    healthy: bool
    """What routing sees now: False while the circuit is open and no probe is due."""
    circuit: str
    """``closed``, ``open`` or ``half_open`` (open, but its probe is due)."""
    consecutive_failures: int
    last_error_code: str | None
    last_error_message: str | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    opened_at: datetime | None
    next_probe_at: datetime | None


class RoutingOut(BaseModel):
    flags: FlagsOut
    channels: list[ChannelOut]
    cutover: CutoverOut


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(min_length=1, max_length=64)


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(min_length=1, max_length=64)
    percent: float = Field(ge=0, le=100)


class DefaultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(min_length=1, max_length=64)


class AuditOut(BaseModel):
    id: int
    actor: str
    action: str
    before: Any
    after: Any
    occurred_at: datetime


class AuditList(BaseModel):
    entries: list[AuditOut]


class ExplainTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=15)


class ExplainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(max_length=32)
    channel: str | None = Field(default=None, max_length=64)
    template: ExplainTemplate | None = None


class ExplainOut(BaseModel):
    to: str
    lead_id: str | None
    channel: str
    reason: str
    passed_over: list[str]
    window_open: bool


def _override_out(override: flags.Override) -> dict[str, Any]:
    return {
        "match": override.match,
        "channel": override.channel,
        "kind": override.kind,
        "created_at": override.created_at,
    }


def _flags_out(current: flags.RoutingFlags) -> dict[str, Any]:
    return {
        "overrides": [_override_out(o) for o in current.overrides],
        "rollout": {"channel": current.rollout_channel, "percent": current.rollout_percent},
        "default_channel": current.default_channel,
        "default_channel_flag": current.default_channel_flag,
        "updated_at": current.updated_at,
    }


def _invalid(exc: flags.InvalidFlag) -> ApiError:
    return ApiError(422, exc.code, exc.message)


@router.get("", response_model=RoutingOut, summary="The flags, every channel's health, and the cutover")
async def show(services: ServicesDep, _actor: ActorDep) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with services.db.read() as conn:
        current = await flags.read_flags(conn, services.config)
        health = {row["channel"]: row for row in await channel_health_rows(conn)}
        healthy = {state.name: state.healthy for state in await channel_states(conn, services.config, now)}
    channels = []
    for channel in services.config.channels:
        row = health.get(channel.name, {})
        state = row.get("state")
        circuit = "closed" if state != "open" else "open" if not healthy.get(channel.name, False) else "half_open"
        channels.append(
            {
                "name": channel.name,
                "provider": channel.provider,
                "business_number": channel.business_number,
                "can_send": channel.can_send,
                "healthy": healthy.get(channel.name, False),
                "circuit": circuit,
                "consecutive_failures": row.get("consecutive_failures", 0),
                **{
                    key: row.get(key)
                    for key in (
                        "last_error_code",
                        "last_error_message",
                        "last_failure_at",
                        "last_success_at",
                        "opened_at",
                        "next_probe_at",
                    )
                },
            }
        )
    cutover = {
        "from_channel": current.cutover_from,
        "to_channel": current.cutover_to,
        "started_at": current.cutover_started_at,
        "finished_at": current.cutover_finished_at,
    }
    return {"flags": _flags_out(current), "channels": channels, "cutover": cutover}


@router.put("/overrides/{match}", response_model=OverrideOut, summary="Send a number or a prefix through a channel")
async def put_override(match: str, body: OverrideIn, services: ServicesDep, actor: ActorDep) -> dict[str, Any]:
    try:
        override = await flags.set_override(
            services.db, services.config, match, body.channel, actor=actor, now=datetime.now(UTC)
        )
    except flags.InvalidFlag as exc:
        raise _invalid(exc) from None
    return {
        "match": override.match,
        "channel": override.channel,
        "kind": override.kind,
        "created_at": override.created_at,
    }


@router.delete("/overrides/{match}", response_model=OverrideOut, summary="Remove a number's or a prefix's override")
async def delete_override(match: str, services: ServicesDep, actor: ActorDep) -> dict[str, Any]:
    try:
        removed = await flags.remove_override(services.db, match, actor=actor, now=datetime.now(UTC))
    except flags.InvalidFlag as exc:
        raise _invalid(exc) from None
    except flags.UnknownOverride as exc:
        raise ApiError(404, "override_not_found", exc.message) from None
    return _override_out(removed)


@router.put("/rollout", response_model=FlagsOut, summary="Send a percentage of numbers (by hash) through a channel")
async def put_rollout(body: RolloutIn, services: ServicesDep, actor: ActorDep) -> dict[str, Any]:
    try:
        await flags.set_rollout(
            services.db, services.config, body.channel, body.percent, actor=actor, now=datetime.now(UTC)
        )
    except flags.InvalidFlag as exc:
        raise _invalid(exc) from None
    async with services.db.read() as conn:
        return _flags_out(await flags.read_flags(conn, services.config))


@router.put("/default", response_model=FlagsOut, summary="The channel for numbers nothing else claims")
async def put_default(body: DefaultIn, services: ServicesDep, actor: ActorDep) -> dict[str, Any]:
    try:
        await flags.set_default_channel(services.db, services.config, body.channel, actor=actor, now=datetime.now(UTC))
    except flags.InvalidFlag as exc:
        raise _invalid(exc) from None
    async with services.db.read() as conn:
        return _flags_out(await flags.read_flags(conn, services.config))


@router.get("/audit", response_model=AuditList, summary="Flag changes, newest first: who, when, before, after")
async def audit(
    services: ServicesDep, _actor: ActorDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    async with services.db.read() as conn:
        entries = await flags.list_audit(conn, limit=limit)
    return {
        "entries": [
            {
                "id": e.id,
                "actor": e.actor,
                "action": e.action,
                "before": e.before,
                "after": e.after,
                "occurred_at": e.occurred_at,
            }
            for e in entries
        ]
    }


@router.post("/explain", response_model=ExplainOut, summary="The channel the policy would choose now, and why")
async def explain(body: ExplainIn, services: ServicesDep, _actor: ActorDep) -> dict[str, Any]:
    template = (body.template.name, body.template.language) if body.template else None
    try:
        async with services.db.read() as conn:
            found = await explain_route(
                conn, services.config, to=body.to, now=datetime.now(UTC), channel=body.channel, template=template
            )
    except InvalidPhoneNumber as exc:
        raise ApiError(422, "invalid_phone", str(exc)) from None
    except NoRoute as exc:
        raise ApiError(422, exc.code, exc.message) from None
    decision = found.decision
    return {
        "to": found.to,
        "lead_id": found.lead_id,
        "channel": decision.channel,
        "reason": decision.reason,
        "passed_over": list(decision.passed_over),
        "window_open": found.window_open,
    }
