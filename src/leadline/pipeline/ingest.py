"""Group commit for webhooks: every request waiting to be stored is committed in one transaction.

A webhook is answered only after its events are committed. The events of every request waiting are
recorded with :func:`handle_inbound` in one transaction by a writer process (store.writer.BatchWriter),
which retries each request alone if the shared transaction fails, so one bad request fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import RouterRule
from leadline.domain.messages import InboundEvent
from leadline.pipeline.inbound import handle_inbound
from leadline.store import jobs as job_store
from leadline.store.writer import BatchWriter


class Ingestor:
    def __init__(
        self,
        database_url: str,
        rules: Sequence[RouterRule] = (),
        *,
        max_batch_events: int = 1000,
        on_commit: Callable[[], None] | None = None,
    ):
        self.on_commit = on_commit
        self._writer: BatchWriter[Sequence[InboundEvent], bool] = BatchWriter(
            database_url, RecordInbound(tuple(rules)), name="inbound", max_batch=max_batch_events, size=len
        )

    async def submit(self, events: Sequence[InboundEvent]) -> None:
        """Return once ``events`` are committed; raise if they could not be."""
        if not events:
            return
        try:
            queued_jobs = await self._writer.submit(events)
        except Exception as exc:
            raise RuntimeError(f"could not store the webhook's events: {type(exc).__name__}") from exc
        # Only then: an idle worker's look at the job table would cost the server more than the webhook.
        if queued_jobs and self.on_commit is not None:
            self.on_commit()

    async def close(self) -> None:
        await self._writer.close()


@dataclass(frozen=True, slots=True)
class RecordInbound:
    """The writer's work: all the requests' events in one :func:`handle_inbound` (it works in bulk).

    Its result per request says whether a job was queued, so that a worker is woken only then."""

    rules: tuple[RouterRule, ...]

    async def __call__(self, conn: AsyncConnection, requests: Sequence[Sequence[InboundEvent]]) -> list[bool]:
        job_store.start_noting_queued(conn)
        await handle_inbound(conn, [event for events in requests for event in events], rules=self.rules)
        return [job_store.queued_any(conn)] * len(requests)
