"""Group commit for webhooks: every request waiting to be stored is committed in one transaction.

A webhook is answered only after its events are committed. The events of every request waiting are
recorded with :func:`handle_inbound` in one transaction by a writer thread (store.writer.BatchWriter),
which retries each request alone if the shared transaction fails, so one bad request fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import RouterRule
from leadline.domain.messages import InboundEvent
from leadline.pipeline.inbound import handle_inbound
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
        self._rules = rules
        self.on_commit = on_commit
        self._writer: BatchWriter[Sequence[InboundEvent], None] = BatchWriter(
            database_url, self._write, name="inbound", max_batch=max_batch_events, size=len
        )

    async def submit(self, events: Sequence[InboundEvent]) -> None:
        """Return once ``events`` are committed; raise if they could not be."""
        if not events:
            return
        try:
            await self._writer.submit(events)
        except Exception as exc:
            raise RuntimeError(f"could not store the webhook's events: {type(exc).__name__}") from exc
        if self.on_commit is not None:
            self.on_commit()

    async def close(self) -> None:
        await self._writer.close()

    async def _write(self, conn: AsyncConnection, requests: Sequence[Sequence[InboundEvent]]) -> list[None]:
        # All the requests' events in one call: handle_inbound works in bulk statements.
        await handle_inbound(conn, [event for events in requests for event in events], rules=self._rules)
        return [None] * len(requests)
