"""Outbound messages: accepted into the outbox in one transaction, sent by workers, ended in one state.

``accept_outbound`` writes the message, its timeline entry and its send job together (the transactional
outbox): once the API has answered 202, the message will be sent or end in a visible terminal state.
``SendJobs`` runs in any number of worker processes; the job table keeps one lead's sends in order and
hands each job to one worker at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import ChannelConfig, LeadlineConfig
from leadline.domain.ids import new_id
from leadline.domain.messages import DeliveryStatus
from leadline.domain.phones import InvalidPhoneNumber, to_e164
from leadline.domain.routing import ChannelState, NoRoute, RoutingDecision, decide_channel
from leadline.domain.timeline import TimelineKind
from leadline.domain.window import window_is_open
from leadline.metrics import ROUTING_DECISIONS
from leadline.pipeline.inbound import apply_recorded_statuses, statuses_recorded_for
from leadline.pipeline.leads import Contact, identities_of, known_lead_id, upsert_contacts
from leadline.pipeline.ratelimit import TokenBucket
from leadline.pipeline.worker import JobRun, PermanentFailure, RetryLater
from leadline.providers.base import ErrorClass, MessagingProvider, ProviderError, TemplateSend
from leadline.providers.http import new_client_session
from leadline.providers.registry import get_plugin
from leadline.routing.facts import SharedFacts, routing_facts
from leadline.routing.failover import Held, count_failover, fail_over, release_held, schedule_probe
from leadline.routing.health import (
    Circuit,
    all_circuits,
    claim_probe,
    failure_kind,
    get_circuit,
    record_channel_failure,
    record_channel_success,
)
from leadline.store import jobs as job_store
from leadline.store.db import Database, insert_ignoring_duplicates
from leadline.store.jobs import Job
from leadline.store.tables import messages
from leadline.store.timeline import record_timeline
from leadline.store.writer import BatchWriter

log = structlog.get_logger(__name__)

SEND_JOB = "send_message"
MARK_READ_JOB = "mark_read"


# --------------------------------------------------------------------------------------------
# What the CRM asks for


@dataclass(frozen=True, slots=True)
class TextBody:
    text: str
    preview_url: bool = False


@dataclass(frozen=True, slots=True)
class TemplateBody:
    name: str
    language: str
    variables: Mapping[str, str] | Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class MediaBody:
    kind: str
    url: str
    caption: str | None = None
    filename: str | None = None


OutboundBody = TextBody | TemplateBody | MediaBody


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    to: str
    body: OutboundBody
    channel: str | None = None
    reply_to: str | None = None
    """leadline's id of the message being answered, or the provider's id of it."""
    idempotency_key: str | None = None
    fallback_template: TemplateBody | None = None
    """Sent instead of a free-form body when the customer-service window is closed."""

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str
    lead_id: str
    channel: str
    status: str
    created: bool
    """False when an earlier request with the same idempotency key already created the message."""


class OutboundRefused(Exception):
    """The request cannot be accepted; nothing was stored."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # answered from the writer process (store.writer)
        return (type(self), (self.status, self.code, self.message))


# --------------------------------------------------------------------------------------------
# Accepting into the outbox


async def _prepare_template(conn: AsyncConnection, channel: ChannelConfig, body: TemplateBody) -> dict[str, Any]:
    from leadline.templates.service import TemplateError, prepare_template_send

    try:
        prepared = await prepare_template_send(
            conn, channel=channel, name=body.name, language=body.language, variables=body.variables
        )
    except TemplateError as exc:
        raise OutboundRefused(exc.http_status, exc.code, exc.message) from None
    return {
        "type": "template",
        "template": dataclasses.asdict(prepared.send),
        "rendered_text": prepared.rendered_text,
        "name": body.name,
        "language": body.language,
        # Kept so that failover can render the template again for another channel's provider.
        "variables": dict(body.variables) if isinstance(body.variables, Mapping) else list(body.variables),
    }


def _content_of(body: TextBody | MediaBody) -> dict[str, Any]:
    if isinstance(body, TextBody):
        return {"type": "text", "text": body.text, "preview_url": body.preview_url}
    return {"type": "media", "kind": body.kind, "url": body.url, "caption": body.caption, "filename": body.filename}


def _summary(content: Mapping[str, Any]) -> str:
    if content["type"] == "text":
        return str(content["text"])
    if content["type"] == "template":
        return f"[template {content['name']}] {content['rendered_text']}"
    detail = content.get("caption") or content.get("filename") or content["url"]
    return f"[{content['kind']}] {detail}"


async def _existing_by_key(conn: AsyncConnection, key: str, fingerprint: str) -> Accepted | None:
    row = (
        await conn.execute(
            select(messages.c.id, messages.c.lead_id, messages.c.channel, messages.c.status, messages.c.content).where(
                messages.c.idempotency_key == key
            )
        )
    ).first()
    if row is None:
        return None
    if row.content.get("request_sha256") != fingerprint:
        raise OutboundRefused(409, "idempotency_key_reused", "this idempotency key was used for a different message")
    return Accepted(row.id, row.lead_id, row.channel, row.status, created=False)


async def accept_outbound(
    conn: AsyncConnection,
    config: LeadlineConfig,
    request: OutboundRequest,
    now: datetime,
    *,
    shared: SharedFacts | None = None,
    subscribers: Sequence[str] | None = None,
) -> Accepted:
    """Validate, route, check the window, and write message + timeline + send job in ``conn``'s transaction.

    Every refusal is decided before the first write (a new customer's lead is created last), so a refused
    request has stored nothing, without a SAVEPOINT around it. ``shared`` and ``subscribers``: the
    routing facts common to every lead and the CRM subscribers, when read earlier in ``conn``'s
    transaction.
    """
    try:
        to = to_e164(request.to)
    except InvalidPhoneNumber as exc:
        raise OutboundRefused(422, "invalid_phone", str(exc)) from None
    fingerprint = request.fingerprint()
    if request.idempotency_key is not None:
        existing = await _existing_by_key(conn, request.idempotency_key, fingerprint)
        if existing is not None:
            return existing

    contact = Contact("to", identities_of("", to), to)
    known_lead = await known_lead_id(conn, contact)
    facts = await routing_facts(conn, config, known_lead, now, shared)
    approved = None
    if isinstance(request.body, TemplateBody):
        from leadline.templates.service import channels_with_approved

        approved = frozenset(await channels_with_approved(conn, request.body.name, request.body.language))
    try:
        decision = decide_channel(
            to=to,
            channels=facts.channels,
            explicit=request.channel,
            threads=facts.threads,
            flags=facts.flags,
            drain_age=facts.drain_age,
            now=now,
            approved=approved,
        )
    except NoRoute as exc:
        raise OutboundRefused(422, exc.code, exc.message) from None
    windows = facts.threads.last_inbound
    body: OutboundBody = request.body
    if not isinstance(body, TemplateBody) and not window_is_open(windows.get(decision.channel), now):
        decision = _stay_on_dead_thread(decision, facts.channels, windows, now)
    channel = config.channel(decision.channel)
    window_open = window_is_open(windows.get(channel.name), now)
    if not isinstance(body, TemplateBody) and not window_open:
        if request.fallback_template is None:
            raise OutboundRefused(
                422,
                "needs_template",
                f"the 24-hour customer-service window on {channel.name} is closed for {to}: send a template,"
                " or name a fallback_template",
            )
        body = request.fallback_template
    content = await _prepare_template(conn, channel, body) if isinstance(body, TemplateBody) else _content_of(body)
    if request.fallback_template is not None and body is not request.fallback_template:
        content["fallback"] = await _prepare_template(conn, channel, request.fallback_template)
    content.update(
        to=to,
        reply_to=await _provider_reply_id(conn, request.reply_to, channel),
        request_sha256=fingerprint,
        routing={"channel": decision.channel, "reason": decision.reason, "passed_over": list(decision.passed_over)},
    )
    # Accepted: from here on, the request is written.
    lead_id = known_lead or (await upsert_contacts(conn, [contact], now))[0]["to"]

    message_id = new_id("msg")
    row = {
        "id": message_id,
        "lead_id": lead_id,
        "direction": "out",
        "channel": channel.name,
        "provider": channel.provider,
        "provider_message_id": None,
        "kind": content["kind"] if content["type"] == "media" else content["type"],
        "text": content.get("text") or content.get("caption") or content.get("rendered_text"),
        "content": content,
        "raw": None,
        "status": DeliveryStatus.QUEUED.value,
        "status_rank": DeliveryStatus.QUEUED.rank,
        "idempotency_key": request.idempotency_key,
        "occurred_at": now,
        "created_at": now,
    }
    if request.idempotency_key is not None:
        inserted = await insert_ignoring_duplicates(
            conn, messages, [row], conflict_columns=["idempotency_key"], returning="id"
        )
        if not inserted:  # a concurrent request with the same key won the race
            existing = await _existing_by_key(conn, request.idempotency_key, fingerprint)
            assert existing is not None
            return existing
    else:
        await conn.execute(messages.insert(), row)  # a fixed statement: compiled once, not per message

    await record_timeline(
        conn,
        [
            {
                "lead_id": lead_id,
                "kind": TimelineKind.MESSAGE_OUT.value,
                "message_id": message_id,
                "channel": channel.name,
                "summary": _summary(content),
                "data": {"type": content["type"], "routing": content["routing"]},
                "occurred_at": now,
                "dedupe_key": f"out:{message_id}",
            }
        ],
        now=now,
        subscribers=subscribers,
    )
    await job_store.enqueue(
        conn,
        [
            job_store.new_job(
                SEND_JOB,
                {"message_id": message_id},
                now=now,
                order_key=f"send:{lead_id}",
                dedupe_key=f"send:{message_id}",
            )
        ],
    )
    ROUTING_DECISIONS.labels(decision.channel, decision.reason).inc()
    return Accepted(message_id, lead_id, channel.name, DeliveryStatus.QUEUED.value, created=True)


def _stay_on_dead_thread(
    decision: RoutingDecision, channels: Sequence[ChannelState], windows: Mapping[str, datetime], now: datetime
) -> RoutingDecision:
    """A free-form reply whose only open window is on a channel that is down cannot move as it is.

    It is accepted on that channel all the same, and the send path treats it as every message on an open
    circuit: held until the channel is back, or converted to the re-engagement template (routing.failover),
    by configuration. Refusing it here would put the outage on the CRM.
    """
    down = {c.name for c in channels if not c.healthy}
    stranded = sorted(
        ((at, name) for name, at in windows.items() if name in down and window_is_open(at, now)), reverse=True
    )
    if not stranded:
        return decision
    return RoutingDecision(stranded[0][1], "thread_in_flight_channel_down", decision.passed_over)


async def _provider_reply_id(conn: AsyncConnection, reply_to: str | None, channel: ChannelConfig) -> str | None:
    if reply_to is None:
        return None
    row = (
        await conn.execute(select(messages.c.provider_message_id, messages.c.provider).where(messages.c.id == reply_to))
    ).first()
    if row is None:
        return reply_to  # the provider's own id
    if row.provider != channel.provider or row.provider_message_id is None:
        raise OutboundRefused(422, "reply_to_other_channel", "the message replied to is not on the chosen channel")
    return str(row.provider_message_id)


# --------------------------------------------------------------------------------------------
# Terminal and forward states


@dataclass(frozen=True, slots=True)
class Acceptance:
    message_id: str
    provider: str
    provider_message_id: str
    at: datetime


_ACCEPT = (
    update(messages)
    .where(messages.c.id == bindparam("message_id"), messages.c.provider_message_id.is_(None))
    .values(
        provider_message_id=bindparam("provider_message_id"),
        status=DeliveryStatus.ACCEPTED.value,
        status_rank=DeliveryStatus.ACCEPTED.rank,
    )
)


async def mark_all_accepted(conn: AsyncConnection, accepted: Sequence[Acceptance]) -> None:
    """The provider took these messages: keep each one's id, then apply any status report that came first.

    A handful of statements, whatever the number of messages."""
    if not accepted:
        return
    await conn.execute(
        _ACCEPT, [{"message_id": a.message_id, "provider_message_id": a.provider_message_id} for a in accepted]
    )
    # The rows that now carry this send's id: a message that already had one (an earlier send of a
    # retried job was answered first) keeps it and is not marked again.
    rows = await conn.execute(
        select(messages.c.id, messages.c.lead_id, messages.c.channel, messages.c.provider_message_id).where(
            messages.c.id.in_([a.message_id for a in accepted])
        )
    )
    by_id = {a.message_id: a for a in accepted}
    marked = [(by_id[row.id], row) for row in rows if row.provider_message_id == by_id[row.id].provider_message_id]
    marked.sort(key=lambda pair: pair[0].message_id)
    await record_timeline(
        conn,
        [
            {
                "lead_id": row.lead_id,
                "kind": TimelineKind.STATUS.value,
                "message_id": a.message_id,
                "channel": row.channel,
                "summary": DeliveryStatus.ACCEPTED.value,
                "data": {"status": DeliveryStatus.ACCEPTED.value, "provider_message_id": a.provider_message_id},
                "occurred_at": a.at,
                "dedupe_key": f"status:{a.provider}:{a.provider_message_id}:accepted",
            }
            for a, row in marked
        ],
        now=max(a.at for a in accepted),
    )
    reported_first = await statuses_recorded_for(conn, [(a.provider, a.provider_message_id) for a, _ in marked])
    for a, _ in marked:
        if (a.provider, a.provider_message_id) in reported_first:
            await apply_recorded_statuses(conn, a.provider, a.provider_message_id, a.at)


async def mark_failed(conn: AsyncConnection, message_id: str, code: str, title: str, now: datetime) -> None:
    """The message ends failed, with the reason on the timeline; never again sent by this job."""
    result = await conn.execute(
        update(messages)
        .where(messages.c.id == message_id, messages.c.status_rank < DeliveryStatus.FAILED.rank)
        .values(
            status=DeliveryStatus.FAILED.value,
            status_rank=DeliveryStatus.FAILED.rank,
            error_code=code,
            error_title=title[:500],
        )
        .returning(messages.c.lead_id, messages.c.channel)
    )
    row = result.first()
    if row is None:
        return
    await record_timeline(
        conn,
        [
            {
                "lead_id": row.lead_id,
                "kind": TimelineKind.STATUS.value,
                "message_id": message_id,
                "channel": row.channel,
                "summary": f"failed: {code} {title}".strip(),
                "data": {"status": DeliveryStatus.FAILED.value, "error_code": code},
                "occurred_at": now,
                "dedupe_key": f"status:local:{message_id}:failed:{code}",
            }
        ],
        now=now,
    )


async def redrive_dead_sends(conn: AsyncConnection, job_ids: Sequence[int] | None, now: datetime) -> int:
    """Re-queue dead jobs; a send that never reached the provider goes back to ``queued`` with them."""
    dead = await job_store.list_jobs(conn, state=job_store.JobState.DEAD, limit=100_000)
    chosen = [j for j in dead if job_ids is None or j["id"] in job_ids]
    message_ids = [j["payload"]["message_id"] for j in chosen if j["kind"] == SEND_JOB]
    if message_ids:
        await conn.execute(
            update(messages)
            .where(messages.c.id.in_(message_ids), messages.c.provider_message_id.is_(None))
            .values(
                status=DeliveryStatus.QUEUED.value,
                status_rank=DeliveryStatus.QUEUED.rank,
                error_code=None,
                error_title=None,
            )
        )
    return await job_store.redrive(conn, [j["id"] for j in chosen], now=now)


# --------------------------------------------------------------------------------------------
# Sending


class ChannelClients:
    """One pooled HTTP session and provider client per channel, made on first use in the running loop."""

    def __init__(self, config: LeadlineConfig):
        self._config = config
        self._clients: dict[str, MessagingProvider] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._limiters: dict[str, TokenBucket] = {}

    def client(self, channel_name: str) -> MessagingProvider:
        if channel_name not in self._clients:
            channel = self._config.channel(channel_name)
            plugin = get_plugin(channel.provider)
            if plugin is None or plugin.make_client is None or not channel.can_send:
                raise PermanentFailure(f"channel {channel_name} cannot send")
            session = new_client_session()
            self._sessions[channel_name] = session
            self._clients[channel_name] = plugin.make_client(channel, session, self._config.settings.public_url)
        return self._clients[channel_name]

    def limiter(self, channel_name: str) -> TokenBucket:
        if channel_name not in self._limiters:
            self._limiters[channel_name] = TokenBucket(self._config.channel(channel_name).rate_limit_per_second)
        return self._limiters[channel_name]

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        self._clients.clear()


def template_send_from(data: Mapping[str, Any]) -> TemplateSend:
    return TemplateSend(**data)


async def _send(client: MessagingProvider, content: Mapping[str, Any]) -> str:
    to, reply_to = content["to"], content.get("reply_to")
    if content["type"] == "text":
        return await client.send_text(to, content["text"], preview_url=content["preview_url"], reply_to=reply_to)
    if content["type"] == "template":
        return await client.send_template(to, template_send_from(content["template"]), reply_to=reply_to)
    return await client.send_media(
        to, content["kind"], content["url"], caption=content["caption"], filename=content["filename"], reply_to=reply_to
    )


class _SendReads:
    """Reads the rows of the sends that start together (a claimed batch) in one query, with the circuits.

    The worker starts a batch's handlers at once; each asks for its row before its first real await, so
    one read after the current loop iteration serves them all instead of a transaction per send.
    """

    def __init__(self, db: Database):
        self._db = db
        self._waiting: dict[str, list[asyncio.Future[tuple[Any, Circuit | None]]]] = {}
        self._reading: set[asyncio.Task[None]] = set()

    async def read(self, message_id: str) -> tuple[Any, Circuit | None]:
        """The message's row (None if it does not exist) and its channel's circuit."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._start)
        future: asyncio.Future[tuple[Any, Circuit | None]] = loop.create_future()
        self._waiting.setdefault(message_id, []).append(future)
        return await future

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, {}
        task = asyncio.ensure_future(self._read(waiting))
        self._reading.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._reading.discard)

    async def _read(self, waiting: dict[str, list[asyncio.Future[tuple[Any, Circuit | None]]]]) -> None:
        try:
            async with self._db.read() as conn:
                rows = {r.id: r for r in await conn.execute(select(messages).where(messages.c.id.in_(waiting)))}
                circuits = await all_circuits(conn)
        except Exception as exc:
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for message_id, futures in waiting.items():
            row = rows.get(message_id)
            for future in futures:
                if not future.done():
                    future.set_result((row, None if row is None else circuits.get(row.channel)))


@dataclass(frozen=True, slots=True)
class _Sent:
    """A send the provider accepted, waiting for its answer to be committed."""

    job: Job
    message_id: str
    provider: str
    channel: str
    provider_message_id: str
    began: datetime
    now: datetime


async def _commit_sent(conn: AsyncConnection, sent: Sequence[_Sent]) -> list[RetryLater | None]:
    """Commit the answers of every accepted send waiting, each with its job's completion.

    A send whose lease was lost (another worker owns its job now) commits nothing, and its handler
    raises as it did with a transaction of its own; the others commit together, in a handful of
    statements. A channel whose circuit is closed gets one success write for the whole batch (resetting
    the failure count); an open one is handled per send, as only a send that began after the latest
    failure may close it.
    """
    owned = await job_store.still_owned(conn, [s.job for s in sent])
    kept = [s for s in sent if s.job.id in owned]
    closed = set()
    for channel in sorted({s.channel for s in kept}):
        circuit = await get_circuit(conn, channel)
        if circuit is None or not circuit.is_open:
            closed.add(channel)
            on_channel = [s for s in kept if s.channel == channel]
            # The earliest start stands for the batch: should another process open the circuit after the
            # read above (PostgreSQL), a send in flight when it opened still cannot close it.
            now, began = max(s.now for s in on_channel), min(s.began for s in on_channel)
            if await record_channel_success(conn, channel, now, sent_since=began):
                await release_held(conn, now=now, channel=channel)
    await mark_all_accepted(conn, [Acceptance(s.message_id, s.provider, s.provider_message_id, s.now) for s in kept])
    for s in kept:
        if s.channel not in closed and await record_channel_success(conn, s.channel, s.now, sent_since=s.began):
            await release_held(conn, now=s.now, channel=s.channel)
    if kept:
        await job_store.finish_all(conn, [s.job for s in kept], now=max(s.now for s in kept))
    return [None if s.job.id in owned else RetryLater("lease lost: another worker owns this job now") for s in sent]


class SendJobs:
    """The job handlers of the outbound path."""

    def __init__(self, config: LeadlineConfig, db: Database, clients: ChannelClients):
        self.config = config
        self.db = db
        self.clients = clients
        self._reads = _SendReads(db)
        self._sent: BatchWriter[_Sent, RetryLater | None] = BatchWriter(db.url, _commit_sent, name="sent")

    async def close(self) -> None:
        await self._sent.close()

    async def send(self, job: Job, run: JobRun) -> None:
        """Send one queued message; a channel whose circuit is open is not tried (but for its one probe)."""
        message_id = job.payload["message_id"]
        row, circuit = await self._reads.read(message_id)
        if row is None or row.status != DeliveryStatus.QUEUED.value:
            return  # already sent, ended or held: a retried or re-claimed job must not send twice
        began = run.now()
        if circuit is not None and circuit.is_open and not await self._claimed_probe(row.channel, circuit, began):
            await self._fail_over(run, row, None)
            return
        await self.clients.limiter(row.channel).acquire()
        client = self.clients.client(row.channel)
        try:
            provider_message_id = await _send(client, row.content)
        except ProviderError as error:
            await self._failed(job, run, row, error)
            return
        sent = _Sent(job, row.id, row.provider, row.channel, provider_message_id, began, run.now())
        lost = await self._sent.submit(sent)
        if lost is not None:
            raise lost
        run.finished = True

    async def _claimed_probe(self, channel: str, circuit: Circuit, now: datetime) -> bool:
        """Whether this send is the open circuit's probe (due, and no other sender took it first)."""
        if not circuit.probe_due(now):
            return False
        async with self.db.transaction() as conn:
            return await claim_probe(conn, channel, now, self.config.settings.routing)

    async def _fail_over(self, run: JobRun, row: Any, error: ProviderError | None) -> None:
        """The message's channel is down: move it, convert it or hold it (routing.failover), and end this job."""
        now = run.now()
        async with self.db.transaction() as conn:
            circuit = await get_circuit(conn, row.channel)
            assert circuit is not None and circuit.is_open
            outcome = await fail_over(
                conn,
                self.config,
                row,
                circuit=circuit,
                now=now,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
            )
            if isinstance(outcome, Held):
                await schedule_probe(conn, row.channel, circuit.next_probe_at, now)
            # A move comes with a fresh send job on the new channel (its own attempts), in this transaction.
            await run.finish(conn)
        count_failover(outcome)

    async def _failed(self, job: Job, run: JobRun, row: Any, error: ProviderError) -> None:
        now = run.now()
        log.warning(
            "send_failed",
            message_id=row.id,
            channel=row.channel,
            error_class=error.error_class.value,
            code=error.code,
            attempt=job.attempts,
        )
        kind = failure_kind(error)
        if kind is not None:
            async with self.db.transaction() as conn:
                health = await record_channel_failure(
                    conn,
                    row.channel,
                    kind=kind,
                    code=error.code,
                    message=error.message,
                    now=now,
                    config=self.config.settings.routing,
                )
                if health.circuit.is_open:
                    await schedule_probe(conn, row.channel, health.circuit.next_probe_at, now)
            if health.circuit.is_open:
                await self._fail_over(run, row, error)
                return
        retryable = error.error_class in (ErrorClass.RETRY_LATER, ErrorClass.CHANNEL_FAILURE)
        will_retry = retryable and job.attempts < self.config.settings.worker.max_attempts
        fallback = row.content.get("fallback")
        use_fallback = error.error_class is ErrorClass.NEEDS_TEMPLATE and fallback is not None
        async with self.db.transaction() as conn:
            if use_fallback:
                # The window closed after the message was accepted: the fallback template goes instead.
                content = {key: value for key, value in row.content.items() if key != "fallback"} | fallback
                await conn.execute(
                    update(messages).where(messages.c.id == row.id).values(content=content, kind="template")
                )
            elif not will_retry:
                await mark_failed(conn, row.id, error.code, error.message, now)
                if not retryable:
                    await run.finish(conn)
        if use_fallback:
            raise RetryLater("the window closed: sending the fallback template", delay=0)
        if will_retry:
            raise RetryLater(f"{error.code}: {error.message}", delay=error.retry_after)
        if retryable:
            raise PermanentFailure(f"gave up after {job.attempts} attempts: {error.code} {error.message}")

    async def mark_read(self, job: Job, run: JobRun) -> None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == job.payload["message_id"]))).first()
        if row is None or row.provider_message_id is None:
            return
        try:
            await self.clients.client(row.channel).mark_read(row.provider_message_id)
        except ProviderError as error:
            if error.error_class is ErrorClass.RETRY_LATER:
                raise RetryLater(error.message, delay=error.retry_after) from error
            raise PermanentFailure(f"{error.code}: {error.message}") from error
