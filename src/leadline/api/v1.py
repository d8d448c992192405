"""The REST API for the CRM and operators, under ``/v1``, behind bearer API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from leadline.api.errors import ApiError
from leadline.bootstrap import Services
from leadline.config import hash_api_key
from leadline.domain.phones import InvalidPhoneNumber
from leadline.media.records import MediaState, get_media
from leadline.store import queries


async def services_of(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop on every request.
    services: Services = request.app.state.services
    return services


async def require_api_key(request: Request) -> str:
    """Bearer API keys; only their SHA-256 is ever compared or stored."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    digest = hash_api_key(key.strip())
    services = await services_of(request)
    for configured in services.config.settings.api_keys:
        if configured.key_sha256 == digest:
            return configured.name
    async with services.db.read() as conn:
        if await queries.api_key_is_valid(conn, digest):
            return "database-key"
    raise ApiError(401, "unauthorized", "the API key is not valid")


router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])
ServicesDep = Annotated[Services, Depends(services_of)]


class Lead(BaseModel):
    id: str
    phone: str | None
    """None while WhatsApp withholds the customer's number (a customer with a username)."""
    display_name: str | None
    owner: str | None
    tags: list[str]
    created_at: datetime
    last_inbound_at: datetime | None
    last_inbound_channel: str | None


class LeadList(BaseModel):
    leads: list[Lead]


class TimelineEvent(BaseModel):
    id: int
    kind: str
    message_id: str | None
    channel: str | None
    summary: str | None
    data: dict[str, Any]
    occurred_at: datetime


class TimelinePage(BaseModel):
    events: list[TimelineEvent]
    next_cursor: str | None


class StatusEntry(BaseModel):
    status: str
    occurred_at: datetime
    error: dict[str, Any] | None


class MediaItem(BaseModel):
    id: str
    state: str
    """``pending`` until fetched, then ``stored`` (bytes at ``/v1/media/{id}``) or ``failed`` (see ``error``)."""
    mime_type: str | None
    filename: str | None
    size: int | None
    error: str | None


class Message(BaseModel):
    id: str
    lead_id: str
    direction: str
    channel: str
    provider: str
    provider_message_id: str | None
    kind: str
    text: str | None
    content: dict[str, Any]
    status: str | None
    error: dict[str, Any] | None
    occurred_at: datetime
    created_at: datetime
    status_history: list[StatusEntry]
    media: list[MediaItem]


@router.get("/leads", response_model=LeadList, summary="Find leads by phone number (any spelling), or list recent ones")
async def find_leads(
    services: ServicesDep,
    phone: Annotated[str | None, Query(description="A phone number in international form")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    async with services.db.read() as conn:
        if phone is None:
            return {"leads": await queries.list_leads(conn, limit=limit)}
        try:
            return {"leads": await queries.find_leads_by_phone(conn, phone)}
        except InvalidPhoneNumber as exc:
            raise ApiError(400, "invalid_phone", str(exc)) from None


@router.get("/leads/{lead_id}", response_model=Lead)
async def get_lead(lead_id: str, services: ServicesDep) -> dict[str, Any]:
    async with services.db.read() as conn:
        lead = await queries.get_lead(conn, lead_id)
    if lead is None:
        raise ApiError(404, "lead_not_found", f"no lead {lead_id}")
    return lead


@router.get("/leads/{lead_id}/timeline", response_model=TimelinePage, summary="A lead's timeline, newest first")
async def get_timeline(
    lead_id: str,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    async with services.db.read() as conn:
        if await queries.get_lead(conn, lead_id) is None:
            raise ApiError(404, "lead_not_found", f"no lead {lead_id}")
        try:
            page = await queries.timeline(conn, lead_id, limit=limit, cursor=cursor)
        except queries.InvalidCursor as exc:
            raise ApiError(400, "invalid_cursor", str(exc)) from None
    return {"events": page.events, "next_cursor": page.next_cursor}


@router.get("/messages/{message_id}", response_model=Message, summary="A message with its status history")
async def get_message(message_id: str, services: ServicesDep) -> dict[str, Any]:
    async with services.db.read() as conn:
        message = await queries.get_message(conn, message_id)
    if message is None:
        raise ApiError(404, "message_not_found", f"no message {message_id}")
    return message


_MEDIA_HEADERS = {
    # The bytes are whatever a customer sent: never let a browser sniff them into HTML or run them.
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def _inline(filename: str | None) -> str:
    """Content-Disposition for a file shown in place; a customer's file name, quoted so it cannot break out."""
    if not filename:
        return "inline"
    quoted = quote(filename)
    return f'inline; filename="{filename}"' if quoted == filename else f"inline; filename*=utf-8''{quoted}"


@router.get(
    "/media/{media_id}",
    response_class=StreamingResponse,
    summary="The bytes of an inbound media item",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file, with its content type"},
        404: {"description": "No such media item"},
        409: {"description": "Not fetched yet (media_not_ready)"},
        410: {"description": "The fetch failed for good (media_failed); the message says why"},
    },
)
async def get_media_file(media_id: str, services: ServicesDep) -> StreamingResponse:
    async with services.db.read() as conn:
        media = await get_media(conn, media_id)
    if media is None:
        raise ApiError(404, "media_not_found", f"no media {media_id}")
    if media["state"] == MediaState.PENDING.value:
        raise ApiError(409, "media_not_ready", f"media {media_id} has not been fetched from the provider yet")
    if media["state"] == MediaState.FAILED.value:
        raise ApiError(410, "media_failed", media["error"] or "the media could not be fetched")
    chunks = await services.media_storage.open(media["storage_key"]) if services.media_storage else None
    if chunks is None:
        raise ApiError(410, "media_missing", f"media {media_id} was stored but its file is gone")
    return StreamingResponse(
        chunks,
        media_type=media["mime_type"] or "application/octet-stream",
        headers={
            **_MEDIA_HEADERS,
            "Content-Length": str(media["size"]),
            "Content-Disposition": _inline(media["filename"]),
        },
    )
