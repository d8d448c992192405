"""Provider webhooks: verify, translate, commit, answer. Thin on purpose: all knowledge of a provider's
wire format is in its translator, found by the provider's name in the path."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import structlog
from fastapi import APIRouter, Request, Response

from leadline.api.errors import ApiError
from leadline.bootstrap import Services
from leadline.domain.messages import InboundMessage, StatusUpdate
from leadline.metrics import INBOUND_EVENTS, WEBHOOK_ITEM_PROBLEMS, WEBHOOK_REJECTIONS
from leadline.providers.base import RawRequest, WebhookRejected, WebhookTranslator
from leadline.store.tables import webhook_rejections

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _translator(services: Services, provider: str) -> WebhookTranslator:
    translator = services.translators.get(provider)
    if translator is None:
        raise ApiError(404, "unknown_provider", f"no channel is configured for provider {provider!r}")
    return translator


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _raw_request(request: Request, services: Services, body: bytes) -> RawRequest:
    # Read from the ASGI scope: cheaper than Starlette's URL and Headers objects, on every webhook.
    scope = request.scope
    path: str = scope["path"]
    query = scope["query_string"].decode("latin-1")
    public_base = services.config.settings.public_url
    public_url = str(request.url) if public_base is None else public_base + path + (f"?{query}" if query else "")
    return RawRequest(
        method=scope["method"],
        path=path,
        query_string=query,
        # Header names arrive in lower case (ASGI); the last of a repeated header wins, as before.
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
        body=body,
        public_url=public_url,
    )


async def _record_rejection(services: Services, provider: str, exc: WebhookRejected) -> None:
    channel = exc.channel or "unknown"
    WEBHOOK_REJECTIONS.labels(provider, channel, exc.code).inc()
    log.warning("webhook_rejected", provider=provider, channel=channel, code=exc.code, reason=exc.reason)
    try:
        async with services.db.transaction() as conn:
            await conn.execute(
                webhook_rejections.insert().values(
                    provider=provider,
                    channel=exc.channel,
                    code=exc.code,
                    reason=exc.reason[:500],
                    occurred_at=datetime.now(UTC),
                )
            )
    except Exception:
        log.exception("webhook_rejection_not_recorded", provider=provider)


@router.get("/{provider}", include_in_schema=True, summary="Subscription handshake (Meta's hub.challenge)")
async def webhook_handshake(provider: str, request: Request) -> Response:
    services = _services(request)
    translator = _translator(services, provider)
    raw = _raw_request(request, services, b"")
    try:
        reply = translator.handshake(raw)
    except WebhookRejected as exc:
        await _record_rejection(services, provider, exc)
        raise ApiError(exc.status, exc.code, exc.message) from None
    return Response(content=reply.body, status_code=reply.status, media_type=reply.content_type)


@router.post("/{provider}", summary="Inbound messages and status updates from a provider")
async def webhook_events(provider: str, request: Request) -> Response:
    services = _services(request)
    translator = _translator(services, provider)
    body = await _read_body(request, services.config.settings.max_body_bytes)
    raw = _raw_request(request, services, body)
    try:
        translated = translator.translate(raw)
    except WebhookRejected as exc:
        await _record_rejection(services, provider, exc)
        raise ApiError(exc.status, exc.code, exc.message) from None

    for problem in translated.problems:
        WEBHOOK_ITEM_PROBLEMS.labels(provider, problem.channel or "unknown").inc()
        log.warning("webhook_item_skipped", provider=provider, channel=problem.channel, reason=problem.reason)
    if translated.unknown_channels:
        log.warning("webhook_for_unknown_channel", provider=provider, addresses=sorted(translated.unknown_channels))
        if not translated.events:
            WEBHOOK_REJECTIONS.labels(provider, "unknown", "unknown_channel").inc()
            raise ApiError(
                404, "unknown_channel", f"no configured channel owns {', '.join(sorted(translated.unknown_channels))}"
            )

    await services.ingestor.submit(translated.events)

    counts = Counter(
        (
            getattr(event, "channel", None) or "unknown",
            "message"
            if isinstance(event, InboundMessage)
            else "status"
            if isinstance(event, StatusUpdate)
            else "notice",
        )
        for event in translated.events
    )
    for (channel, kind), count in counts.items():
        INBOUND_EVENTS.labels(provider, channel, kind).inc(count)
    reply = translated.reply
    return Response(content=reply.body, status_code=reply.status, media_type=reply.content_type)
