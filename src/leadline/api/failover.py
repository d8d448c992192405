"""``/v1/health`` and ``/v1/held``: each channel's circuit breaker, and the messages failover held.

Thin: each route reads or changes the database through routing.failover, as ``leadline health`` and
``leadline held`` do, so the API and the CLI never disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from leadline.api.errors import ApiError
from leadline.api.v1 import ServicesDep, require_api_key
from leadline.routing.failover import health_report, list_held, release_held

router = APIRouter(prefix="/v1", tags=["failover"], dependencies=[Depends(require_api_key)])


class ChannelHealth(BaseModel):
    name: str
    provider: str
    can_send: bool
    circuit: str
    """``closed``; ``open`` (routing passes the channel over until ``next_probe_at``); ``half_open`` (open,
    and the next send on it is the probe that closes or re-opens it)."""
    healthy: bool
    consecutive_failures: int
    last_error_code: str | None
    last_error_message: str | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    opened_at: datetime | None
    next_probe_at: datetime | None
    held: int
    """Messages held on this channel (``GET /v1/held``)."""


class HealthOut(BaseModel):
    channels: list[ChannelHealth]


class HeldMessage(BaseModel):
    id: str
    lead_id: str
    to: str | None
    channel: str
    kind: str
    text: str | None
    reason: str | None
    error_code: str | None
    held_at: datetime | None
    created_at: datetime


class HeldOut(BaseModel):
    messages: list[HeldMessage]


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=1000)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> ReleaseIn:
        if self.all == bool(self.ids):
            raise ValueError("name the held messages in 'ids', or set 'all': true")
        return self


class ReleaseOut(BaseModel):
    released: list[str]


@router.get("/health", response_model=HealthOut, summary="Every channel's circuit breaker and held messages")
async def get_health(services: ServicesDep) -> dict[str, Any]:
    async with services.db.read() as conn:
        return {"channels": await health_report(conn, services.config, datetime.now(UTC))}


@router.get("/held", response_model=HeldOut, summary="Messages held because their channel is down")
async def get_held(
    services: ServicesDep,
    channel: Annotated[str | None, Query(description="Only those held on this channel")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    async with services.db.read() as conn:
        return {"messages": await list_held(conn, channel=channel, limit=limit)}


@router.post("/held/release", response_model=ReleaseOut, summary="Put held messages back in the queue")
async def post_release(body: ReleaseIn, services: ServicesDep) -> dict[str, Any]:
    async with services.db.transaction() as conn:
        released = await release_held(conn, now=datetime.now(UTC), message_ids=None if body.all else body.ids)
    if not released and not body.all:
        raise ApiError(404, "not_held", "none of these messages is held")
    services.wake_worker()
    return {"released": released}
