"""``/v1/templates``: define and validate templates, and see their approval on every channel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from leadline.api.errors import ApiError
from leadline.api.v1 import ServicesDep, require_api_key
from leadline.templates import store
from leadline.templates.definitions import Problem, SourcedDefinition, parse_definition
from leadline.templates.errors import InvalidTemplate
from leadline.templates.providers import APPROVED, NOT_SUBMITTED
from leadline.templates.sync import define_templates, template_channels
from leadline.templates.validation import validate_template

router = APIRouter(prefix="/v1/templates", tags=["templates"], dependencies=[Depends(require_api_key)])


class ProblemOut(BaseModel):
    field: str
    message: str


class Validation(BaseModel):
    valid: bool
    problems: list[ProblemOut]


class ChannelStatus(BaseModel):
    channel: str
    provider: str | None
    status: str
    provider_template_id: str | None
    rejection_reason: str | None
    sendable: bool
    changed_since_submission: bool
    submitted_at: datetime | None
    synced_at: datetime | None


class Template(BaseModel):
    name: str
    language: str
    category: str
    source: str
    definition: dict[str, Any]
    channels: list[ChannelStatus]
    updated_at: datetime


class TemplateList(BaseModel):
    templates: list[Template]


def _problems(problems: list[Problem]) -> list[ProblemOut]:
    return [ProblemOut(field=p.field, message=p.message) for p in problems]


def _out(template: store.StoredTemplate, channel_names: list[str]) -> dict[str, Any]:
    names = list(dict.fromkeys([*channel_names, *template.channels]))
    channels = []
    for name in names:
        state = template.channels.get(name)
        channels.append(
            {
                "channel": name,
                "provider": state.provider if state else None,
                "status": state.status if state else NOT_SUBMITTED,
                "provider_template_id": state.provider_template_id if state else None,
                "rejection_reason": state.rejection_reason if state else None,
                "sendable": bool(state and state.status == APPROVED),
                "changed_since_submission": bool(
                    state and state.fingerprint and state.fingerprint != template.fingerprint
                ),
                "submitted_at": state.submitted_at if state else None,
                "synced_at": state.synced_at if state else None,
            }
        )
    return {
        "name": template.name,
        "language": template.language,
        "category": template.category,
        "source": template.source,
        "definition": template.definition.to_json(),
        "channels": channels,
        "updated_at": template.updated_at,
    }


@router.post("/validate", response_model=Validation, summary="Check a definition against WhatsApp's rules")
async def validate(body: dict[str, Any]) -> dict[str, Any]:
    parsed = parse_definition(body)
    problems = parsed if isinstance(parsed, list) else validate_template(parsed)
    return {"valid": not problems, "problems": _problems(problems)}


@router.post("", response_model=Template, status_code=201, summary="Define (or redefine) a template")
async def define(body: dict[str, Any], services: ServicesDep) -> dict[str, Any]:
    parsed = parse_definition(body)
    if isinstance(parsed, list):
        raise ApiError(422, InvalidTemplate.code, InvalidTemplate(parsed).message)
    try:
        await define_templates(services.db, [SourcedDefinition(parsed, "api")])
    except InvalidTemplate as exc:
        raise ApiError(422, exc.code, exc.message) from None
    async with services.db.read() as conn:
        stored = await store.get_template(conn, parsed.name, parsed.language)
    assert stored is not None
    return _out(stored, [c.name for c in template_channels(services.config)])


@router.get("", response_model=TemplateList, summary="Every template with its status on every channel")
async def list_all(services: ServicesDep) -> dict[str, Any]:
    async with services.db.read() as conn:
        stored = await store.list_templates(conn)
    names = [c.name for c in template_channels(services.config)]
    return {"templates": [_out(t, names) for t in stored]}


@router.get("/{name}/{language}", response_model=Template, summary="One template with its status on every channel")
async def get_one(name: str, language: str, services: ServicesDep) -> dict[str, Any]:
    async with services.db.read() as conn:
        stored = await store.get_template(conn, name, language)
    if stored is None:
        raise ApiError(404, "template_not_found", f"no template {name!r} in language {language!r}")
    return _out(stored, [c.name for c in template_channels(services.config)])
