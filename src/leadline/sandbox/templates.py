"""Template management in the sandbox: Meta's message_templates and Twilio's Content API (A5, B6).

Routes, relative to the sandbox root:

- ``POST /meta/{version}/{waba_id}/message_templates``: create; PENDING at once, and a second
  template of the same name and language is refused as Meta does (code 100, subcode 2388024). An
  AUTHENTICATION template is refused without exactly one OTP button, with body text or a header, or
  with a code expiration outside 1 to 90 minutes.
  A media header (IMAGE, VIDEO, DOCUMENT) is refused without ``example.header_handle`` (a handle from
  the Resumable Upload API, :mod:`leadline.sandbox.uploads`).
- ``GET /meta/{version}/{waba_id}/message_templates``: list (``name``, ``status``, ``limit``,
  ``after``), with Graph paging.
- ``POST /twilio/v1/Content``, ``GET /twilio/v1/Content``, ``GET /twilio/v2/ContentAndApprovals``,
  ``POST /twilio/v1/Content/{sid}/ApprovalRequests/whatsapp``, ``GET /twilio/v1/Content/{sid}/ApprovalRequests``.

A submission is decided APPROVED, or REJECTED when its name starts with ``reject_`` (or is in
``reject_names``), ``delay`` seconds after it was submitted, or at once on ``POST /_sandbox/templates/decide``
(``provider``, ``name``, ``language``, ``status``, ``reason``: all optional; with ``status`` any template
can be moved, to PAUSED for instance). Each decision on Meta is sent to leadline as a signed
``message_template_status_update`` webhook. ``POST /_sandbox/templates/settings`` (``delay``: seconds or
null for decisions on demand only, ``reject_prefix``, ``reject_names``); ``GET /_sandbox/templates``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leadline.sandbox.core import Delivery, OutgoingWebhook, Provider, Sandbox
from leadline.sandbox.meta import graph_error_response, meta_signature
from leadline.sandbox.twilio import new_sid, twilio_error_response

DEFAULT_DECISION_DELAY = 2.0
_NAME_MAX = 512
_META_CATEGORIES = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})


@dataclass(slots=True)
class SandboxTemplate:
    provider: Provider
    account: str
    """The WABA id (Meta) or the account SID (Twilio)."""
    id: str
    name: str
    language: str
    category: str
    content: dict[str, Any]
    """Meta: the components; Twilio: the Content's ``types`` and ``variables``."""
    status: str
    """Meta's upper-case statuses; Twilio's lower-case ones (``unsubmitted`` before an approval request)."""
    rejection_reason: str | None = None
    friendly_name: str | None = None
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecideSpec(_Strict):
    provider: Provider | None = None
    name: str | None = None
    language: str | None = None
    status: str | None = None
    """Force this status on every matching template; otherwise pending ones are approved or rejected."""
    reason: str | None = None


class SettingsSpec(_Strict):
    delay: float | None = Field(default=DEFAULT_DECISION_DELAY, ge=0, le=3600)
    reject_prefix: str = "reject_"
    reject_names: list[str] = Field(default_factory=list)


class TemplatesFake:
    """The template endpoints of both fake providers, sharing one decision machine."""

    def __init__(self, sandbox: Sandbox, *, delay: float | None = DEFAULT_DECISION_DELAY) -> None:
        self._sandbox = sandbox
        self.templates: list[SandboxTemplate] = []
        self.settings = SettingsSpec(delay=delay)
        self._meta_ids = itertools.count(594425479261596)
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        version = r"{version:v\d+\.\d+}"
        app.router.add_post(f"/meta/{version}/{{waba_id}}/message_templates", self.meta_create)
        app.router.add_get(f"/meta/{version}/{{waba_id}}/message_templates", self.meta_list)
        app.router.add_post("/twilio/v1/Content", self.twilio_create)
        app.router.add_get("/twilio/v1/Content", self.twilio_list)
        app.router.add_get("/twilio/v2/ContentAndApprovals", self.twilio_list_with_approvals)
        app.router.add_post("/twilio/v1/Content/{sid}/ApprovalRequests/whatsapp", self.twilio_request_approval)
        app.router.add_get("/twilio/v1/Content/{sid}/ApprovalRequests", self.twilio_approval)
        app.router.add_get("/_sandbox/templates", self.control_list)
        app.router.add_post("/_sandbox/templates/settings", self.control_settings)
        app.router.add_post("/_sandbox/templates/decide", self.control_decide)
        app.on_shutdown.append(self._stop)

    async def _stop(self, _: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Decisions --------------------------------------------------------------------------

    def _submitted(self, template: SandboxTemplate) -> None:
        if self.settings.delay is None:
            return
        task = asyncio.get_running_loop().create_task(self._decide_later(template, self.settings.delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _decide_later(self, template: SandboxTemplate, delay: float) -> None:
        await asyncio.sleep(delay)
        if _is_pending(template):
            await self.decide(template, None, None)

    async def decide(self, template: SandboxTemplate, status: str | None, reason: str | None) -> Delivery | None:
        """Give ``template`` its verdict (or ``status``) and tell leadline where the provider would."""
        if status is None:
            rejected = (
                template.name.startswith(self.settings.reject_prefix) or template.name in self.settings.reject_names
            )
            status = "REJECTED" if rejected else "APPROVED"
            if rejected and reason is None:
                reason = "INVALID_FORMAT"
        status = status.upper()
        template.rejection_reason = reason if status == "REJECTED" else None
        if template.provider == "twilio":
            template.status = status.lower()
            return None
        template.status = status
        webhook = self._meta_status_webhook(template)
        return await self._sandbox.deliver(webhook) if webhook else None

    def _meta_status_webhook(self, template: SandboxTemplate) -> OutgoingWebhook | None:
        channel = next((c for c in self._sandbox.config.meta if c.waba_id == template.account), None)
        if channel is None:
            return None
        value: dict[str, Any] = {
            "event": template.status,
            "message_template_id": int(template.id),
            "message_template_name": template.name,
            "message_template_language": template.language,
            "reason": template.rejection_reason or "NONE",
            "message_template_category": template.category,
        }
        if template.status == "REJECTED":
            value["rejection_info"] = {
                "reason": template.rejection_reason or "INVALID_FORMAT",
                "recommendation": "Rejected by the sandbox: its name matches the rejection rule.",
            }
        envelope = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": template.account,
                    "time": int(time.time()),
                    "changes": [{"field": "message_template_status_update", "value": value}],
                }
            ],
        }
        body = json.dumps(envelope, ensure_ascii=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "X-Hub-Signature": "sha1=" + hmac.new(channel.app_secret.encode(), body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": meta_signature(channel.app_secret, body),
        }
        url = f"{self._sandbox.config.webhook_base_url}/webhooks/meta"
        return OutgoingWebhook("meta", "status", url, body, headers, template.id, template.status)

    # Meta -------------------------------------------------------------------------------

    def _meta_authorized(self, request: web.Request, waba_id: str) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return any(
            c.waba_id == waba_id
            and c.access_token
            and hmac.compare_digest(given.strip().encode(), c.access_token.encode())
            for c in self._sandbox.config.meta
        )

    async def meta_create(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._sandbox.record("meta", request, body)
        waba_id = request.match_info["waba_id"]
        if not self._meta_authorized(request, waba_id):
            return graph_error_response(401, 190, "Invalid OAuth access token - Cannot parse access token")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return graph_error_response(400, 100, "Invalid parameter", details="The request body is not a JSON object.")
        name, language, category = payload.get("name"), payload.get("language"), payload.get("category")
        components = payload.get("components")
        for key, value in (("name", name), ("language", language), ("category", category)):
            if not isinstance(value, str) or not value:
                return graph_error_response(400, 100, f"The parameter {key} is required.")
        assert isinstance(name, str) and isinstance(language, str) and isinstance(category, str)
        if len(name) > _NAME_MAX or not all(ch.islower() or ch.isdigit() or ch == "_" for ch in name):
            return graph_error_response(
                400, 100, "Invalid parameter", details="name may only hold lowercase letters, digits and underscores."
            )
        if category not in _META_CATEGORIES:
            return graph_error_response(400, 100, "Invalid parameter", details=f"Unknown category {category}.")
        if not isinstance(components, list) or not any(
            isinstance(c, dict) and str(c.get("type")).upper() == "BODY" for c in components
        ):
            return graph_error_response(400, 100, "Invalid parameter", details="A BODY component is required.")
        if category == "AUTHENTICATION" and (problem := _authentication_problem(components)):
            return graph_error_response(400, 100, "Invalid parameter", details=problem)
        if problem := _media_header_problem(components):
            return graph_error_response(400, 100, "Invalid parameter", details=problem)
        if any(
            t.provider == "meta" and t.account == waba_id and t.name == name and t.language == language
            for t in self.templates
        ):
            return graph_error_response(
                400,
                100,
                "Invalid parameter",
                subcode=2388024,
                details=f"Content in this language already exists: there is already {language} content for {name}.",
            )
        template = SandboxTemplate(
            provider="meta",
            account=waba_id,
            id=str(next(self._meta_ids)),
            name=name,
            language=language,
            category=category,
            content={"components": components, "parameter_format": payload.get("parameter_format", "POSITIONAL")},
            status="PENDING",
        )
        self.templates.append(template)
        self._submitted(template)
        return web.json_response({"id": template.id, "status": template.status, "category": template.category})

    async def meta_list(self, request: web.Request) -> web.Response:
        self._sandbox.record("meta", request, b"")
        waba_id = request.match_info["waba_id"]
        if not self._meta_authorized(request, waba_id):
            return graph_error_response(401, 190, "Invalid OAuth access token - Cannot parse access token")
        query = request.query
        matching = [
            t
            for t in self.templates
            if t.provider == "meta"
            and t.account == waba_id
            and ("name" not in query or query["name"] in t.name)
            and ("status" not in query or t.status in query["status"].split(","))
        ]
        try:
            limit = max(1, min(int(query.get("limit", "25")), 1000))
            start = int(base64.urlsafe_b64decode(query["after"]).decode()) if "after" in query else 0
        except ValueError:
            return graph_error_response(400, 100, "Invalid parameter", details="limit or after is not valid.")
        page = matching[start : start + limit]
        data = [
            {
                "id": t.id,
                "name": t.name,
                "language": t.language,
                "status": t.status,
                "category": t.category,
                "components": t.content["components"],
                "parameter_format": t.content.get("parameter_format", "POSITIONAL"),
                **({"rejected_reason": t.rejection_reason or "NONE"}),
            }
            for t in page
        ]
        cursors = {
            "before": base64.urlsafe_b64encode(str(start).encode()).decode(),
            "after": base64.urlsafe_b64encode(str(start + len(page)).encode()).decode(),
        }
        paging: dict[str, Any] = {"cursors": cursors}
        if start + len(page) < len(matching):
            paging["next"] = str(request.url.update_query({"after": cursors["after"], "limit": str(limit)}))
        return web.json_response({"data": data, "paging": paging})

    # Twilio -----------------------------------------------------------------------------

    def _twilio_account(self, request: web.Request) -> str | None:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except ValueError:
            return None
        for channel in self._sandbox.config.twilio:
            if channel.account_sid == user and hmac.compare_digest(channel.auth_token.encode(), password.encode()):
                return user
        return None

    def _content(self, account: str, sid: str) -> SandboxTemplate | None:
        return next(
            (t for t in self.templates if t.provider == "twilio" and t.account == account and t.id == sid), None
        )

    @staticmethod
    def _unauthorized() -> web.Response:
        return twilio_error_response(401, 20003, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})

    @staticmethod
    def _not_found(path: str) -> web.Response:
        return twilio_error_response(404, 20404, f"The requested resource {path} was not found")

    async def twilio_create(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._sandbox.record("twilio", request, body)
        account = self._twilio_account(request)
        if account is None:
            return self._unauthorized()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return twilio_error_response(400, 20001, "The request body must be JSON")
        types = payload.get("types")
        if not isinstance(payload.get("language"), str) or not isinstance(types, dict) or not types:
            return twilio_error_response(400, 20001, "language and types are required")
        template = SandboxTemplate(
            provider="twilio",
            account=account,
            id=new_sid("HX"),
            name=str(payload.get("friendly_name") or ""),
            language=payload["language"],
            category="",
            content={"types": types, "variables": payload.get("variables") or {}},
            status="unsubmitted",
            friendly_name=payload.get("friendly_name"),
        )
        self.templates.append(template)
        return web.json_response(self._content_json(template, request), status=201)

    async def twilio_request_approval(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._sandbox.record("twilio", request, body)
        account = self._twilio_account(request)
        if account is None:
            return self._unauthorized()
        template = self._content(account, request.match_info["sid"])
        if template is None:
            return self._not_found(request.path)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict) or not payload.get("name") or payload.get("category") not in _META_CATEGORIES:
            return twilio_error_response(
                400, 20001, "name and category (UTILITY, MARKETING, AUTHENTICATION) are required"
            )
        if template.status == "unsubmitted":
            template.name = str(payload["name"])
            template.category = str(payload["category"])
            template.status = "pending"
            self._submitted(template)
        return web.json_response(self._approval_json(template), status=201)

    async def twilio_approval(self, request: web.Request) -> web.Response:
        self._sandbox.record("twilio", request, b"")
        account = self._twilio_account(request)
        if account is None:
            return self._unauthorized()
        template = self._content(account, request.match_info["sid"])
        if template is None:
            return self._not_found(request.path)
        origin = str(request.url.origin())
        return web.json_response(
            {
                "sid": template.id,
                "account_sid": account,
                "whatsapp": self._approval_json(template),
                "url": f"{origin}/twilio/v1/Content/{template.id}/ApprovalRequests",
            }
        )

    async def twilio_list(self, request: web.Request) -> web.Response:
        return await self._twilio_page(request, with_approvals=False)

    async def twilio_list_with_approvals(self, request: web.Request) -> web.Response:
        return await self._twilio_page(request, with_approvals=True)

    async def _twilio_page(self, request: web.Request, *, with_approvals: bool) -> web.Response:
        self._sandbox.record("twilio", request, b"")
        account = self._twilio_account(request)
        if account is None:
            return self._unauthorized()
        contents = [t for t in self.templates if t.provider == "twilio" and t.account == account]
        try:
            size = max(1, min(int(request.query.get("PageSize", "50")), 1000))
            page = max(0, int(request.query.get("Page", "0")))
        except ValueError:
            return twilio_error_response(400, 20001, "PageSize and Page must be numbers")
        chunk = contents[page * size : (page + 1) * size]
        items = []
        for template in chunk:
            item = self._content_json(template, request)
            if with_approvals:
                item["approval_requests"] = self._approval_json(template)
            items.append(item)

        def page_url(number: int) -> str:
            return str(request.url.with_query({"PageSize": str(size), "Page": str(number)}))

        more = (page + 1) * size < len(contents)
        return web.json_response(
            {
                "contents": items,
                "meta": {
                    "page": page,
                    "page_size": size,
                    "first_page_url": page_url(0),
                    "previous_page_url": page_url(page - 1) if page > 0 else None,
                    "url": page_url(page),
                    "next_page_url": page_url(page + 1) if more else None,
                    "key": "contents",
                },
            }
        )

    @staticmethod
    def _content_json(template: SandboxTemplate, request: web.Request) -> dict[str, Any]:
        origin = str(request.url.origin())
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(template.created_at))
        return {
            "sid": template.id,
            "account_sid": template.account,
            "friendly_name": template.friendly_name,
            "language": template.language,
            "variables": template.content["variables"],
            "types": template.content["types"],
            "url": f"{origin}/twilio/v1/Content/{template.id}",
            "date_created": created,
            "date_updated": created,
            "links": {
                "approval_create": f"{origin}/twilio/v1/Content/{template.id}/ApprovalRequests/whatsapp",
                "approval_fetch": f"{origin}/twilio/v1/Content/{template.id}/ApprovalRequests",
            },
        }

    @staticmethod
    def _approval_json(template: SandboxTemplate) -> dict[str, Any]:
        return {
            "type": "whatsapp",
            "name": template.name if template.status != "unsubmitted" else "",
            "category": template.category,
            "content_type": next(iter(template.content["types"]), ""),
            "status": template.status,
            "rejection_reason": template.rejection_reason or "",
            "allow_category_change": True,
        }

    # Control ----------------------------------------------------------------------------

    async def control_list(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        return web.json_response(
            {"templates": [t.to_json() for t in self.templates if provider is None or t.provider == provider]}
        )

    async def control_settings(self, request: web.Request) -> web.Response:
        spec = await _parse(request, SettingsSpec)
        if isinstance(spec, web.Response):
            return spec
        self.settings = spec
        return web.json_response(spec.model_dump())

    async def control_decide(self, request: web.Request) -> web.Response:
        spec = await _parse(request, DecideSpec)
        if isinstance(spec, web.Response):
            return spec
        chosen = [
            t
            for t in self.templates
            if (spec.provider is None or t.provider == spec.provider)
            and (spec.name is None or t.name == spec.name)
            and (spec.language is None or t.language == spec.language)
            and (spec.status is not None or _is_pending(t))
        ]
        decided = []
        for template in chosen:
            delivery = await self.decide(template, spec.status, spec.reason)
            decided.append(
                {
                    "provider": template.provider,
                    "id": template.id,
                    "name": template.name,
                    "language": template.language,
                    "status": template.status,
                    "leadline_status": delivery.http_status if delivery else None,
                }
            )
        return web.json_response({"decided": decided})


def _media_header_problem(components: list[Any]) -> str | None:
    """Why a media header is refused: Meta reviews it from an uploaded example, a handle."""
    for component in components:
        if not isinstance(component, dict) or str(component.get("type")).upper() != "HEADER":
            continue
        header_format = str(component.get("format", "TEXT")).upper()
        if header_format not in ("IMAGE", "VIDEO", "DOCUMENT"):
            continue
        example = component.get("example")
        handles = example.get("header_handle") if isinstance(example, dict) else None
        if not (isinstance(handles, list) and handles and all(isinstance(h, str) and h for h in handles)):
            return f"A {header_format} header needs example.header_handle, a handle from the Resumable Upload API."
    return None


def _authentication_problem(components: list[Any]) -> str | None:
    """What Meta would refuse in an AUTHENTICATION template's components (its text is WhatsApp's own,
    it has one OTP button, and its code expires after 1 to 90 minutes)."""
    by_type = {str(c.get("type")).upper(): c for c in components if isinstance(c, dict)}
    if "text" in by_type.get("BODY", {}) or "HEADER" in by_type:
        return "Authentication templates take no body text and no header."
    minutes = by_type.get("FOOTER", {}).get("code_expiration_minutes")
    if minutes is not None and not (isinstance(minutes, int) and 1 <= minutes <= 90):
        return "code_expiration_minutes must be from 1 to 90."
    buttons = by_type.get("BUTTONS", {}).get("buttons")
    if not (
        isinstance(buttons, list)
        and len(buttons) == 1
        and isinstance(buttons[0], dict)
        and str(buttons[0].get("type")).upper() == "OTP"
        and str(buttons[0].get("otp_type")).upper() in ("COPY_CODE", "ONE_TAP", "ZERO_TAP")
    ):
        return "Authentication templates need one OTP button."
    return None


def _is_pending(template: SandboxTemplate) -> bool:
    return template.status in ("PENDING", "pending")


async def _parse(request: web.Request, model: type[DecideSpec] | type[SettingsSpec]) -> Any:
    try:
        data = await request.json() if request.can_read_body else {}
    except ValueError:
        return web.json_response({"error": "the body must be JSON"}, status=400)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return web.json_response(
            {"error": "invalid request", "details": exc.errors(include_url=False, include_context=False)}, status=400
        )
