"""The writer processes that commit webhooks beside the server: losing one loses nothing.

A webhook is answered 200 only once its events are committed by the writer. If the writer dies, the
requests it had are answered with a server error (the provider delivers them again), the next request
starts a new writer, and the redelivery is recorded exactly once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import httpx
from helpers import meta_fixture, post_meta, row_counts
from test_idempotency import assert_one_lead_with_one_message, meta_text

from conftest import RunningApp


def writers(name: str) -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == f"leadline-{name}-writer" and p.is_alive()]


async def test_a_killed_writer_loses_nothing_and_the_redelivered_webhook_is_recorded_once(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        # Two messages from one customer (the fixture's sender): one lead, two timeline entries.
        first = await post_meta(client, app.url, meta_text("wamid.writer.1", "5215512345678", "Hola"))
        assert first.status_code == 200
        [writer] = writers("inbound")
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()

        # Delivered while the writer is gone, or just as the server notices: committed, or refused so that
        # the provider delivers it again; never answered 200 without being stored.
        during = await post_meta(client, app.url, meta_fixture("text"))
        assert during.status_code in (200, 500)
        again = await post_meta(client, app.url, meta_fixture("text"))

        assert again.status_code == 200
        assert len(writers("inbound")) == 1
        counts = await row_counts(app.services.db)
        assert (counts["leads"], counts["messages"], counts["timeline_events"]) == (1, 2, 2)


async def test_the_writers_stop_with_the_server(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        assert (await post_meta(client, app.url, meta_fixture("text"))).status_code == 200
    [writer] = writers("inbound")

    await app.services.ingestor.close()

    assert writer.exitcode == 0
    # and a later webhook starts a new one
    async with httpx.AsyncClient() as client:
        assert (await post_meta(client, app.url, meta_fixture("text"))).status_code == 200
        await assert_one_lead_with_one_message(app, client)
