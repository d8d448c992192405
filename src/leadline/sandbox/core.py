"""The sandbox's memory and machinery: recorded requests, faults, media, and the webhooks it owes leadline.

Provider-specific behaviour lives in :mod:`leadline.sandbox.meta` and :mod:`leadline.sandbox.twilio`;
this module only moves their webhooks (status callbacks on a schedule or on demand, injected inbound
messages at once) and keeps what the control API shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from leadline.sandbox.config import SandboxConfig, StatusMode

Provider = Literal["meta", "twilio"]
FaultMode = Literal["error", "throttle", "timeout", "down", "async_error"]

WEBHOOK_TIMEOUT_SECONDS = 15.0
"""Twilio's own limit for a webhook answer; Meta's is unpublished and assumed no longer."""

_HANG_POLL_SECONDS = 0.05

HISTORY_LIMIT = 10_000
"""Recorded requests and deliveries kept; a sandbox left running for days forgets the oldest."""


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request one of the fake providers received, as it arrived (credentials included: it is a sandbox)."""

    seq: int
    provider: Provider
    method: str
    url: str
    path: str
    query: str
    headers: dict[str, str]
    body: str
    received_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Fault:
    """A misbehaviour the fake provider shows on its next ``remaining`` calls (None: until cleared)."""

    mode: FaultMode
    code: int | None = None
    http_status: int | None = None
    remaining: int | None = None
    retry_after: float | None = None
    seconds: float | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """Media of an injected inbound message, served back to leadline on download."""

    id: str
    provider: Provider
    channel: str
    content: bytes
    mime_type: str
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class PendingStatus:
    """A status callback the sandbox owes leadline for a message it accepted."""

    provider: Provider
    channel: str
    message_id: str
    status: str
    recipient: str
    """The customer's number in E.164."""
    error_code: int | None = None
    status_callback: str | None = None
    """Twilio only: the StatusCallback URL the send named."""
    messaging_service_sid: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class OutgoingWebhook:
    """A signed webhook request ready to be POSTed to leadline."""

    provider: Provider
    kind: Literal["status", "inbound"]
    url: str
    body: bytes
    headers: Mapping[str, str]
    message_id: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of POSTing one webhook to leadline."""

    seq: int
    provider: Provider
    kind: str
    url: str
    message_id: str
    status: str | None
    http_status: int | None
    error: str | None
    request_headers: dict[str, str]
    request_body: str
    response_body: str
    delivered_at: float

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Control API payloads


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FaultSpec(_Strict):
    provider: Provider
    mode: FaultMode
    code: int | None = None
    http_status: int | None = Field(default=None, ge=400, le=599)
    count: int | None = Field(default=None, ge=1)
    retry_after: float | None = Field(default=None, ge=0)
    seconds: float | None = Field(default=None, gt=0, le=300)
    message: str | None = None

    @model_validator(mode="after")
    def _code_where_needed(self) -> FaultSpec:
        if self.mode in ("error", "async_error") and self.code is None:
            raise ValueError(f"mode {self.mode!r} needs a code")
        return self


class InboundMediaSpec(_Strict):
    mime_type: str | None = None
    filename: str | None = None
    content_base64: str | None = None
    """The bytes leadline downloads; a small placeholder when absent."""


class InboundButtonSpec(_Strict):
    payload: str
    text: str | None = None


class InboundLocationSpec(_Strict):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


InboundKind = Literal["text", "image", "video", "audio", "voice", "document", "sticker", "button", "location"]
MEDIA_INBOUND_KINDS = frozenset({"image", "video", "audio", "voice", "document", "sticker"})


class InboundSpec(_Strict):
    """``POST /_sandbox/inbound``: a customer writes to one of the business numbers."""

    provider: Provider
    channel: str | None = None
    """A channel name; the provider's first channel when absent."""
    from_: str = Field(alias="from", pattern=r"^\+?[1-9][0-9]{5,14}$")
    name: str | None = None
    text: str | None = None
    """The text, or the caption of media."""
    kind: InboundKind = "text"
    media: InboundMediaSpec | None = None
    button: InboundButtonSpec | None = None
    location: InboundLocationSpec | None = None
    reply_to: str | None = None
    """The provider id of the business message this one quotes (or whose button was tapped)."""
    message_id: str | None = None
    """Fix the provider message id (to replay a message); a new one when absent."""
    repeat: int = Field(default=1, ge=1, le=20)
    """Deliver the same signed webhook this many times, as a provider retrying would."""

    @model_validator(mode="after")
    def _consistent(self) -> InboundSpec:
        if self.kind == "text" and not self.text:
            raise ValueError("a text message needs text")
        if self.kind == "button" and self.button is None:
            raise ValueError("kind 'button' needs button: {payload, text}")
        if self.kind == "location" and self.location is None:
            raise ValueError("kind 'location' needs location: {latitude, longitude}")
        return self

    @property
    def sender_digits(self) -> str:
        return self.from_.lstrip("+")


class StatusModeSpec(_Strict):
    mode: StatusMode
    delay: float | None = Field(default=None, ge=0, le=60)


@dataclass(frozen=True, slots=True)
class InjectedInbound:
    """What a fake provider built for an inbound injection."""

    channel: str
    message_id: str
    webhook: OutgoingWebhook
    media: list[dict[str, Any]] = field(default_factory=list)


class ProviderFake(Protocol):
    """What :class:`Sandbox` needs from each fake provider."""

    name: Provider

    def add_routes(self, app: web.Application) -> None: ...

    def status_webhook(self, pending: PendingStatus) -> OutgoingWebhook: ...

    def inbound_webhook(self, spec: InboundSpec, sandbox_url: str) -> InjectedInbound: ...


# --------------------------------------------------------------------------------------------
# The sandbox


def stored_media(
    spec: InboundSpec,
    *,
    media_id: str,
    provider: Provider,
    channel: str,
    default_mime: Mapping[str, str],
    placeholder: str,
) -> StoredMedia:
    """The bytes an injected message's media stands for: given by the caller, or a recognisable placeholder."""
    given = spec.media
    content = base64.b64decode(given.content_base64) if given and given.content_base64 else placeholder.encode()
    return StoredMedia(
        id=media_id,
        provider=provider,
        channel=channel,
        content=content,
        mime_type=given.mime_type if given and given.mime_type else default_mime[spec.kind],
        filename=given.filename if given else None,
    )


class Sandbox:
    """All state of one sandbox, kept in memory."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.status_mode: StatusMode = config.status_mode
        self.status_delay = config.status_delay
        self.requests: deque[RecordedRequest] = deque(maxlen=HISTORY_LIMIT)
        self.faults: dict[Provider, Fault] = {}
        self.media: dict[str, StoredMedia] = {}
        self.pending: list[PendingStatus] = []
        self.deliveries: deque[Delivery] = deque(maxlen=HISTORY_LIMIT)
        self.fakes: dict[Provider, ProviderFake] = {}
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Event | None = None

    # Life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS),
            # Some webhook receivers answer with redirects; providers do not follow them.
            raise_for_status=False,
        )

    async def release_requests(self) -> None:
        """Let requests held by a ``timeout`` fault go, so that shutting down does not wait for them."""
        if self._closing is not None:
            self._closing.set()

    async def close(self) -> None:
        await self.release_requests()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Requests -------------------------------------------------------------------------------

    def record(self, provider: Provider, request: web.Request, body: bytes) -> RecordedRequest:
        recorded = RecordedRequest(
            seq=next(self._seq),
            provider=provider,
            method=request.method,
            url=str(request.url),
            path=request.path,
            query=request.query_string,
            headers=dict(request.headers),
            body=body.decode("utf-8", "replace"),
            received_at=time.time(),
        )
        self.requests.append(recorded)
        return recorded

    # Faults ---------------------------------------------------------------------------------

    def set_fault(self, spec: FaultSpec) -> Fault:
        fault = Fault(
            mode=spec.mode,
            code=spec.code,
            http_status=spec.http_status,
            remaining=spec.count,
            retry_after=spec.retry_after,
            seconds=spec.seconds,
            message=spec.message,
        )
        self.faults[spec.provider] = fault
        return fault

    def take_fault(self, provider: Provider, *, sending: bool) -> Fault | None:
        """The fault this call meets, counting it as used. ``async_error`` only meets sends."""
        fault = self.faults.get(provider)
        if fault is None or (fault.mode == "async_error" and not sending):
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self.faults[provider]
        return fault

    async def hang(self, request: web.Request, seconds: float | None) -> web.Response:
        """Hold a request without answering until the client gives up, the sandbox stops, or ``seconds`` pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(seconds or self.config.timeout_fault_seconds, self.config.timeout_fault_seconds)
        assert self._closing is not None, "the sandbox is not started"
        # aiohttp does not cancel a handler when its client disconnects, so the transport is watched.
        while loop.time() < deadline and not self._closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), _HANG_POLL_SECONDS)
        return web.Response(status=504, text="sandbox: timeout fault")

    # Status callbacks -----------------------------------------------------------------------

    def schedule(self, statuses: list[PendingStatus]) -> None:
        """Owe leadline these callbacks, in order: now-ish in ``auto`` mode, on flush in ``manual`` mode."""
        if self.status_mode == "manual":
            self.pending.extend(statuses)
            return
        task = asyncio.get_running_loop().create_task(self._deliver_later(statuses, self.status_delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_later(self, statuses: list[PendingStatus], delay: float) -> None:
        for pending in statuses:
            await asyncio.sleep(delay)
            await self.deliver(self.fakes[pending.provider].status_webhook(pending))

    async def flush(self, message_id: str | None = None) -> list[Delivery]:
        """Deliver the pending callbacks (all, or those of one message) now, in the order they were owed."""
        due = [p for p in self.pending if message_id is None or p.message_id == message_id]
        self.pending = [p for p in self.pending if p not in due]
        return [await self.deliver(self.fakes[p.provider].status_webhook(p)) for p in due]

    # Delivery -------------------------------------------------------------------------------

    async def deliver(self, webhook: OutgoingWebhook) -> Delivery:
        assert self._session is not None, "the sandbox is not started"
        http_status: int | None = None
        error: str | None = None
        response_body = ""
        try:
            async with self._session.post(
                webhook.url, data=webhook.body, headers=dict(webhook.headers), allow_redirects=False
            ) as response:
                http_status = response.status
                response_body = (await response.read()).decode("utf-8", "replace")[:2000]
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery = Delivery(
            seq=next(self._seq),
            provider=webhook.provider,
            kind=webhook.kind,
            url=webhook.url,
            message_id=webhook.message_id,
            status=webhook.status,
            http_status=http_status,
            error=error,
            request_headers=dict(webhook.headers),
            request_body=webhook.body.decode("utf-8", "replace"),
            response_body=response_body,
            delivered_at=time.time(),
        )
        self.deliveries.append(delivery)
        return delivery
