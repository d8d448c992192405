"""Recording messages leadline sent, so that provider status reports have a message to move forward."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.domain.ids import new_id
from leadline.domain.messages import DeliveryStatus
from leadline.pipeline.inbound import apply_recorded_statuses
from leadline.store.tables import messages


async def record_outbound_message(
    conn: AsyncConnection,
    *,
    lead_id: str,
    channel: str,
    provider: str,
    provider_message_id: str,
    kind: str,
    text: str | None,
    now: datetime,
) -> str:
    """Insert a sent message as ``accepted`` and apply any status reports that arrived before it.

    Returns leadline's id for the message.
    """
    message_id = new_id("msg")
    await conn.execute(
        messages.insert().values(
            id=message_id,
            lead_id=lead_id,
            direction="out",
            channel=channel,
            provider=provider,
            provider_message_id=provider_message_id,
            kind=kind,
            text=text,
            content={"text": text} if text is not None else {},
            status=DeliveryStatus.ACCEPTED.value,
            status_rank=DeliveryStatus.ACCEPTED.rank,
            occurred_at=now,
            created_at=now,
        )
    )
    await apply_recorded_statuses(conn, provider, provider_message_id, now)
    return message_id
