"""Sending through leadline: ``POST /v1/messages`` writes to the outbox and answers 202."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from leadline.api.errors import ApiError
from leadline.api.v1 import require_api_key, services_of
from leadline.bootstrap import Services
from leadline.pipeline.outbound import (
    MARK_READ_JOB,
    MediaBody,
    OutboundRefused,
    OutboundRequest,
    TemplateBody,
    TextBody,
)
from leadline.store import jobs as job_store
from leadline.store.tables import messages

router = APIRouter(prefix="/v1", tags=["messages"], dependencies=[Depends(require_api_key)])
ServicesDep = Annotated[Services, Depends(services_of)]


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=15)
    variables: dict[str, str] | list[str] = Field(default_factory=list)
    """By name (``{"first_name": "Lucía"}``) or by position (``["Lucía", "8812"]``)."""

    def body(self) -> TemplateBody:
        return TemplateBody(self.name, self.language, self.variables)


class MediaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["image", "video", "audio", "document", "sticker"]
    url: str = Field(pattern=r"^https?://", max_length=2000)
    caption: str | None = Field(default=None, max_length=1024)
    filename: str | None = Field(default=None, max_length=240)


class SendMessageIn(BaseModel):
    """Exactly one of ``text``, ``template`` or ``media``."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="The customer's number in international form", max_length=32)
    channel: str | None = Field(default=None, description="Send through this channel (default: the routing policy)")
    text: str | None = Field(default=None, min_length=1, max_length=4096)
    preview_url: bool = False
    template: TemplateIn | None = None
    media: MediaIn | None = None
    reply_to: str | None = Field(
        default=None, description="leadline's id (or the provider's id) of the message answered"
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    fallback_template: TemplateIn | None = Field(
        default=None, description="Sent instead of text or media when the 24-hour window is closed"
    )

    @model_validator(mode="after")
    def _one_body(self) -> SendMessageIn:
        given = [name for name in ("text", "template", "media") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, template or media")
        return self

    def request(self, header_key: str | None) -> OutboundRequest:
        body: TextBody | TemplateBody | MediaBody
        if self.text is not None:
            body = TextBody(self.text, self.preview_url)
        elif self.template is not None:
            body = self.template.body()
        else:
            assert self.media is not None
            body = MediaBody(self.media.kind, self.media.url, self.media.caption, self.media.filename)
        return OutboundRequest(
            to=self.to,
            body=body,
            channel=self.channel,
            reply_to=self.reply_to,
            idempotency_key=self.idempotency_key or header_key,
            fallback_template=self.fallback_template.body() if self.fallback_template else None,
        )


class MessageAccepted(BaseModel):
    id: str
    lead_id: str
    channel: str
    status: str


@router.post(
    "/messages",
    status_code=202,
    response_model=MessageAccepted,
    summary="Send a message (queued in the outbox; the answer does not wait for the provider)",
    responses={409: {"description": "idempotency key reused"}, 422: {"description": "needs_template and others"}},
)
async def send_message(
    payload: SendMessageIn,
    http: Request,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> JSONResponse:
    services: Services = http.app.state.services  # not a dependency: this is the hot path of sending
    request = payload.request(idempotency_key)
    try:
        accepted = await services.outbox.accept(request, datetime.now(UTC))
    except OutboundRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    services.wake_worker()
    body = {
        "id": accepted.message_id,
        "lead_id": accepted.lead_id,
        "channel": accepted.channel,
        "status": accepted.status,
    }
    return JSONResponse(body, status_code=202)


@router.post("/messages/{message_id}/read", status_code=202, summary="Mark a customer's message as read")
async def mark_read(message_id: str, services: ServicesDep, request: Request) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with services.db.transaction() as conn:
        row = (await conn.execute(select(messages.c.direction).where(messages.c.id == message_id))).first()
        if row is None:
            raise ApiError(404, "message_not_found", f"no message {message_id}")
        if row.direction != "in":
            raise ApiError(422, "not_inbound", "only a customer's message can be marked as read")
        await job_store.enqueue(
            conn,
            [job_store.new_job(MARK_READ_JOB, {"message_id": message_id}, now=now, dedupe_key=f"read:{message_id}")],
        )
    services.wake_worker()
    return {"id": message_id, "status": "queued"}
