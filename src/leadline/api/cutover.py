"""``/v1/cutover``: the cutover in progress (or the last one) and what blocks one (see docs/cutover.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from leadline.api.errors import ApiError
from leadline.api.v1 import ServicesDep, require_api_key
from leadline.routing.cutover import CutoverError, cutover_status, plan

router = APIRouter(prefix="/v1/cutover", tags=["cutover"], dependencies=[Depends(require_api_key)])


class PlanRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    from_channel: str = Field(alias="from")
    to_channel: str = Field(alias="to")


@router.get("", summary="Threads still draining, messages per channel over the last hour, failovers")
async def status(services: ServicesDep) -> dict[str, Any]:
    async with services.db.read() as conn:
        current = await cutover_status(conn, services.config, now=datetime.now(UTC))
    return current.to_json()


@router.post("/plan", summary="What blocks moving traffic from one channel to another (a live credential check)")
async def plan_cutover(body: PlanRequest, services: ServicesDep) -> dict[str, Any]:
    try:
        async with services.db.read() as conn:
            blockers = await plan(conn, services.config, body.from_channel, body.to_channel)
    except CutoverError as exc:
        raise ApiError(422, exc.code, exc.message) from None
    return {
        "from": body.from_channel,
        "to": body.to_channel,
        "ready": not blockers,
        "blockers": [b.to_json() for b in blockers],
    }
