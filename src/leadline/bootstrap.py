"""The composition root: the one place where configuration becomes running parts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from leadline.config import LeadlineConfig
from leadline.media.fetch import MediaJobs
from leadline.media.records import FETCH_MEDIA_JOB
from leadline.media.storage import LocalMediaStorage, MediaStorage, S3MediaStorage
from leadline.pipeline.callbacks import CallbackJobs, sync_subscribers
from leadline.pipeline.handlers import run_handler_job
from leadline.pipeline.inbound import HANDLER_JOB, NOTICE_JOB
from leadline.pipeline.ingest import Ingestor
from leadline.pipeline.notices import NoticeHandler, notice_job_handler
from leadline.pipeline.outbound import MARK_READ_JOB, SEND_JOB, ChannelClients, SendJobs
from leadline.pipeline.outbox import Outbox
from leadline.pipeline.worker import JobHandler, Worker
from leadline.providers.base import WebhookTranslator
from leadline.providers.registry import get_plugin
from leadline.routing.failover import PROBE_JOB, probe_job_handler
from leadline.store.db import Database
from leadline.store.timeline import CALLBACK_JOB
from leadline.store.writer import start_fork_server
from leadline.templates.sync import (
    TEMPLATE_STATUS_TOPIC,
    TEMPLATE_SYNC_JOB,
    template_status_notice_handler,
    template_sync_job_handler,
)


@dataclass
class Services:
    config: LeadlineConfig
    db: Database
    ingestor: Ingestor
    outbox: Outbox
    translators: dict[str, WebhookTranslator]
    job_handlers: dict[str, JobHandler] = field(default_factory=dict)
    notice_handlers: dict[str, NoticeHandler] = field(default_factory=dict)
    """Per notice topic; filled in by the features that own a topic (templates own template updates)."""

    clients: ChannelClients | None = None
    media_storage: MediaStorage | None = None
    callbacks: CallbackJobs | None = None
    send_jobs: SendJobs | None = None
    wake_worker: Callable[[], None] = lambda: None
    """Tells this process's worker that there is work now (set when a worker runs in the process)."""

    async def start(self, *, migrate: bool = True) -> None:
        """Bring the schema up to date and tell the database which CRM subscribers exist."""
        if migrate:
            await self.db.migrate()
        async with self.db.transaction() as conn:
            await sync_subscribers(conn, self.config, datetime.now(UTC))
        await asyncio.to_thread(start_fork_server)
        # What was built until now lives as long as the process: out of the cyclic collector's sight, whose
        # full collections would otherwise walk it again and again while requests are in flight (measured:
        # about 100 µs per webhook at 64 in flight, a third of the server's work).
        gc.freeze()

    def new_worker(self, worker_id: str | None = None) -> Worker:
        return Worker(self.db, self.job_handlers, self.config.settings.worker, worker_id=worker_id)

    async def close(self) -> None:
        await self.ingestor.close()
        await self.outbox.close()
        if self.send_jobs is not None:
            await self.send_jobs.close()
        if self.clients is not None:
            await self.clients.close()
        if self.callbacks is not None:
            await self.callbacks.close()
        await self.db.close()


def build_services(config: LeadlineConfig) -> Services:
    db = Database(config.settings.database_url)
    translators: dict[str, WebhookTranslator] = {}
    for provider in sorted({c.provider for c in config.channels}):
        plugin = get_plugin(provider)
        assert plugin is not None, "configuration validation admits only registered providers"
        translators[provider] = plugin.make_translator(config.channels_of(provider))
    services = Services(
        config=config,
        db=db,
        ingestor=Ingestor(config.settings.database_url, config.settings.router),
        outbox=Outbox(config),
        translators=translators,
    )
    services.job_handlers[HANDLER_JOB] = run_handler_job
    services.job_handlers[NOTICE_JOB] = notice_job_handler(services.notice_handlers)
    services.clients = ChannelClients(config)
    send_jobs = services.send_jobs = SendJobs(config, db, services.clients)
    services.job_handlers[SEND_JOB] = send_jobs.send
    services.job_handlers[MARK_READ_JOB] = send_jobs.mark_read
    services.job_handlers[PROBE_JOB] = probe_job_handler(config)
    services.callbacks = CallbackJobs(config, db)
    services.job_handlers[CALLBACK_JOB] = services.callbacks.deliver
    media = config.settings.media
    services.media_storage = S3MediaStorage(media) if media.storage == "s3" else LocalMediaStorage(media.storage_dir)
    services.job_handlers[FETCH_MEDIA_JOB] = MediaJobs(config, db, services.clients, services.media_storage).fetch
    services.notice_handlers[TEMPLATE_STATUS_TOPIC] = template_status_notice_handler(config)
    services.job_handlers[TEMPLATE_SYNC_JOB] = template_sync_job_handler(config)
    return services
