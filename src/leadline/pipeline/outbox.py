"""Group commit for ``POST /v1/messages``: every send waiting is accepted into the outbox in one transaction.

Each request runs :func:`accept_outbound` in the shared transaction, which decides every refusal
(``needs_template``, ``invalid_phone``, ``idempotency_key_reused``...) before its first write, so nothing
of a refused one is stored, while the others commit together. A request is answered only once its
message, timeline entry and send job are committed: the outbox guarantee is unchanged, only the commits
are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import LeadlineConfig
from leadline.pipeline.outbound import Accepted, OutboundRefused, OutboundRequest, accept_outbound
from leadline.routing.facts import shared_facts
from leadline.store.timeline import callback_subscribers
from leadline.store.writer import BatchWriter


class Outbox:
    def __init__(self, config: LeadlineConfig, *, max_batch: int = 500):
        self._writer: BatchWriter[tuple[OutboundRequest, datetime], Accepted | OutboundRefused] = BatchWriter(
            config.settings.database_url, AcceptInOutbox(config), name="outbox", max_batch=max_batch
        )

    async def accept(self, request: OutboundRequest, now: datetime) -> Accepted:
        """Return once the message is committed to the outbox; raise :class:`OutboundRefused` if it is not."""
        result = await self._writer.submit((request, now))
        if isinstance(result, OutboundRefused):
            raise result
        return result

    async def close(self) -> None:
        await self._writer.close()


@dataclass(frozen=True, slots=True)
class AcceptInOutbox:
    """The writer's work: each request accepted (or refused, having written nothing) in the shared transaction."""

    config: LeadlineConfig

    async def __call__(
        self, conn: AsyncConnection, requests: Sequence[tuple[OutboundRequest, datetime]]
    ) -> list[Accepted | OutboundRefused]:
        results: list[Accepted | OutboundRefused] = []
        # Flags, circuits and subscribers are read once: no acceptance changes them, and the transaction is shared.
        shared = await shared_facts(conn, self.config)
        subscribers = await callback_subscribers(conn)
        for request, now in requests:
            try:
                results.append(
                    await accept_outbound(conn, self.config, request, now, shared=shared, subscribers=subscribers)
                )
            except OutboundRefused as refused:  # decided before any write: nothing of it stored
                results.append(refused)
        return results
