"""The ``fetch_media`` job: download one media item through its channel's client and store it.

Every item ends ``stored`` or ``failed``. What cannot succeed (a host off the provider's allow-list, a
file over ``media.max_bytes``, media the provider no longer has) fails at once; timeouts and provider
hiccups are retried with the worker's backoff until ``worker.max_attempts``, then fail.
"""

from __future__ import annotations

import contextlib

import structlog

from leadline.config import LeadlineConfig
from leadline.media.records import MediaState, get_media, mark_failed, mark_stored
from leadline.media.storage import MediaStorage
from leadline.pipeline.outbound import ChannelClients
from leadline.pipeline.worker import JobRun, RetryLater
from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.media import MediaFetcher
from leadline.store.db import Database
from leadline.store.jobs import Job

log = structlog.get_logger(__name__)

_RETRYABLE = frozenset({ErrorClass.RETRY_LATER, ErrorClass.CHANNEL_FAILURE})


class MediaJobs:
    def __init__(self, config: LeadlineConfig, db: Database, clients: ChannelClients, storage: MediaStorage):
        self.config = config
        self.db = db
        self.clients = clients
        self.storage = storage

    async def fetch(self, job: Job, run: JobRun) -> None:
        media_id = job.payload["media_id"]
        async with self.db.read() as conn:
            media = await get_media(conn, media_id)
        if media is None or media["state"] != MediaState.PENDING.value:
            return  # deleted with its message, or already ended by an earlier run of this job
        channel: str = media["channel"]
        fetcher = self._fetcher(channel)
        if isinstance(fetcher, str):
            await self._fail(run, media_id, fetcher)
            return
        staged = self.storage.staging_file()
        try:
            fetched = await fetcher.fetch_media(
                media["provider_ref"], into=staged, max_bytes=self.config.settings.media.max_bytes
            )
            key = await self.storage.put(staged, fetched.sha256)
        except ProviderError as error:
            log.warning(
                "media_fetch_failed",
                media_id=media_id,
                channel=channel,
                error_class=error.error_class.value,
                code=error.code,
                attempt=job.attempts,
            )
            reason = f"{error.code}: {error.message}"
            if error.error_class in _RETRYABLE:
                if job.attempts < self.config.settings.worker.max_attempts:
                    raise RetryLater(reason, delay=error.retry_after) from None
                reason = f"gave up after {job.attempts} attempts: {reason}"
            await self._fail(run, media_id, reason)
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        async with self.db.transaction() as conn:
            await mark_stored(
                conn,
                media_id,
                storage_key=key,
                size=fetched.size,
                sha256=fetched.sha256,
                mime_type=media["mime_type"] or fetched.mime_type,
                now=run.now(),
            )
            await run.finish(conn)
        log.info("media_stored", media_id=media_id, channel=channel, size=fetched.size)

    def _fetcher(self, channel: str) -> MediaFetcher | str:
        """The channel's client, or why there is none (the reason the item fails)."""
        if channel not in {c.name for c in self.config.channels}:
            return f"unknown_channel: channel {channel!r} is no longer configured"
        if not self.config.channel(channel).can_send:
            return f"no_credentials: channel {channel!r} has no API credentials to download with"
        client = self.clients.client(channel)
        if not isinstance(client, MediaFetcher):
            return f"not_supported: channel {channel!r} cannot download media"
        return client

    async def _fail(self, run: JobRun, media_id: str, reason: str) -> None:
        async with self.db.transaction() as conn:
            await mark_failed(conn, media_id, error=reason)
            await run.finish(conn)
