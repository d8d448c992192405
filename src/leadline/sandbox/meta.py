"""A fake WhatsApp Cloud API (Graph API) speaking the wire format of PROVIDERS.md A.

Routes, relative to the sandbox root (a Meta channel's ``api_base_url`` is ``<sandbox>/meta/v25.0``):

- ``POST /meta/{version}/{phone_number_id}/messages``: sends and mark-as-read, checked like Meta does.
- ``GET /meta/{version}/{media_id}``: media metadata of injected inbound media.
- ``GET /meta/lookaside/{media_id}``: the media bytes (bearer token required, as on Meta's CDN).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from leadline.sandbox.config import MetaSandboxChannel
from leadline.sandbox.core import (
    MEDIA_INBOUND_KINDS,
    Fault,
    InboundSpec,
    InjectedInbound,
    OutgoingWebhook,
    PendingStatus,
    Provider,
    Sandbox,
    StoredMedia,
    stored_media,
)

SEND_TYPES = frozenset(
    {
        "text",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "template",
        "interactive",
        "reaction",
        "location",
        "contacts",
    }
)
_MEDIA_FIELDS = {
    "image": {"link", "id", "caption"},
    "video": {"link", "id", "caption"},
    "document": {"link", "id", "caption", "filename"},
    "audio": {"link", "id"},
    "sticker": {"link", "id"},
}
_TEMPLATE_COMPONENTS = frozenset({"header", "body", "button", "footer", "carousel", "limited_time_offer"})
_DEFAULT_MIME = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg",
    "voice": "audio/ogg; codecs=opus",
    "document": "application/pdf",
    "sticker": "image/webp",
}
ERRORS: dict[int, tuple[str, str]] = {
    100: ("Invalid parameter", "Invalid parameter"),
    190: ("Invalid OAuth access token - Cannot parse access token", "The access token could not be decrypted"),
    368: ("Temporarily blocked for policies violations", "The account is temporarily blocked for policy violations"),
    130429: ("Rate limit hit", "Cloud API message throughput has been reached."),
    131026: ("Message undeliverable", "Message Undeliverable."),
    131031: ("Business Account locked", "The WhatsApp Business Account has been locked."),
    131042: (
        "Business eligibility payment issue",
        "Message failed to send because there were one or more errors related to your payment method.",
    ),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    ),
    131048: (
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be sent from this "
        "phone number.",
    ),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from this phone number to the same recipient in a short period.",
    ),
    132001: (
        "Template name does not exist in the translation",
        "The template does not exist in the specified language.",
    ),
}
"""Titles and details of the codes faults commonly inject; other codes get a generic text."""


class GraphError(Exception):
    def __init__(
        self, http_status: int, code: int, message: str, *, details: str | None = None, subcode: int | None = None
    ):
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.details = details
        self.subcode = subcode


def graph_error_response(
    http_status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    subcode: int | None = None,
    error_type: str = "OAuthException",
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"message": f"(#{code}) {message}", "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["error_data"] = {"messaging_product": "whatsapp", "details": details or message}
    error["fbtrace_id"] = "Sbx" + secrets.token_urlsafe(12)
    return web.Response(
        status=http_status, body=orjson.dumps({"error": error}), content_type="application/json", headers=headers
    )


def meta_signature(app_secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256``, computed here rather than borrowed from leadline so each checks the other."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def new_wamid() -> str:
    return "wamid." + base64.b64encode(b"SBX" + secrets.token_bytes(27)).decode()


class MetaFake:
    name: Provider = "meta"

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._channels = {c.phone_number_id: c for c in sandbox.config.meta}
        self._by_name = {c.name: c for c in sandbox.config.meta}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(r"/meta/{version:v\d+\.\d+}/{phone_number_id}/messages", self.messages)
        app.router.add_get(r"/meta/{version:v\d+\.\d+}/{media_id}", self.media_info)
        app.router.add_get("/meta/lookaside/{media_id}", self.media_download)

    # Sending ----------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._sandbox.record("meta", request, body)
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        is_read = isinstance(payload, dict) and payload.get("status") == "read"
        fault = self._sandbox.take_fault("meta", sending=not is_read)
        if fault is not None and fault.mode in ("down", "timeout"):
            return await self._fault_response(request, fault)

        channel = self._channels.get(request.match_info["phone_number_id"])
        if channel is None:
            return graph_error_response(
                400,
                100,
                f"Unsupported post request. Object with ID '{request.match_info['phone_number_id']}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this operation",
                subcode=33,
                error_type="GraphMethodException",
            )
        if not _bearer_matches(request, channel.access_token):
            return graph_error_response(401, 190, ERRORS[190][0], details=ERRORS[190][1])
        if fault is not None and fault.mode in ("error", "throttle"):
            return await self._fault_response(request, fault)
        if not isinstance(payload, dict):
            return graph_error_response(400, 100, "Invalid parameter", details="The request body is not a JSON object.")

        try:
            if is_read:
                _check_mark_read(payload)
                return web.json_response({"success": True})
            recipient = _check_send(payload)
        except GraphError as exc:
            return graph_error_response(
                exc.http_status, exc.code, exc.message, details=exc.details, subcode=exc.subcode
            )

        wamid = new_wamid()
        if fault is not None and fault.mode == "async_error":
            steps: list[tuple[str, int | None]] = [("failed", fault.code)]
        else:
            steps = [("sent", None), ("delivered", None), ("read", None)]
        self._sandbox.schedule(
            [
                PendingStatus("meta", channel.name, wamid, status, "+" + recipient, error_code=code)
                for status, code in steps
            ]
        )
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": payload["to"], "wa_id": recipient}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            }
        )

    async def _fault_response(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.mode == "timeout":
            return await self._sandbox.hang(request, fault.seconds)
        if fault.mode == "down":
            return web.Response(status=fault.http_status or 503, text="Service Unavailable")
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        code = fault.code if fault.code is not None else 130429
        default_status = 429 if fault.mode == "throttle" else 400
        title, details = ERRORS.get(code, (f"Sandbox error {code}", f"Error {code} injected by the sandbox."))
        return graph_error_response(
            fault.http_status or default_status, code, fault.message or title, details=details, headers=headers
        )

    # Media ------------------------------------------------------------------------------

    async def media_info(self, request: web.Request) -> web.StreamResponse:
        self._sandbox.record("meta", request, b"")
        media = self._sandbox.media.get(request.match_info["media_id"])
        if media is None or media.provider != "meta":
            return graph_error_response(
                400,
                100,
                f"Unsupported get request. Object with ID '{request.match_info['media_id']}' does not exist",
                subcode=33,
                error_type="GraphMethodException",
            )
        if not _bearer_matches(request, self._by_name[media.channel].access_token):
            return graph_error_response(401, 190, ERRORS[190][0], details=ERRORS[190][1])
        origin = str(request.url.origin())
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": f"{origin}/meta/lookaside/{media.id}?mid={media.id}&ext={int(time.time())}",
                "mime_type": media.mime_type,
                "sha256": base64.b64encode(hashlib.sha256(media.content).digest()).decode(),
                "file_size": len(media.content),
                "id": media.id,
            }
        )

    async def media_download(self, request: web.Request) -> web.StreamResponse:
        self._sandbox.record("meta", request, b"")
        media = self._sandbox.media.get(request.match_info["media_id"])
        if media is None or media.provider != "meta":
            return web.Response(status=404, text="Not Found")
        if not _bearer_matches(request, self._by_name[media.channel].access_token):
            return web.Response(status=401, text="Unauthorized")
        return web.Response(body=media.content, content_type=media.mime_type.split(";")[0])

    # Webhooks ---------------------------------------------------------------------------

    def status_webhook(self, pending: PendingStatus) -> OutgoingWebhook:
        channel = self._by_name[pending.channel]
        now = str(int(time.time()))
        status: dict[str, Any] = {
            "id": pending.message_id,
            "status": pending.status,
            "timestamp": now,
            "recipient_id": pending.recipient.lstrip("+"),
        }
        pricing = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}
        if pending.status == "sent":
            status["conversation"] = {
                "id": hashlib.md5(pending.recipient.encode(), usedforsecurity=False).hexdigest(),
                "expiration_timestamp": str(int(time.time()) + 86400),
                "origin": {"type": "utility"},
            }
            status["pricing"] = pricing
        elif pending.status == "delivered":
            status["pricing"] = pricing
        elif pending.status == "failed":
            code = pending.error_code or 131000
            title, details = ERRORS.get(code, (f"Sandbox error {code}", f"Error {code} injected by the sandbox."))
            status["errors"] = [
                {
                    "code": code,
                    "title": title,
                    "message": title,
                    "error_data": {"details": details},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }
            ]
        value = {"messaging_product": "whatsapp", "metadata": _metadata(channel), "statuses": [status]}
        return self._webhook("status", value, channel, pending.message_id, pending.status)

    def inbound_webhook(self, spec: InboundSpec, sandbox_url: str) -> InjectedInbound:
        channel = self._channel_for(spec.channel)
        wamid = spec.message_id or new_wamid()
        sender = spec.sender_digits
        message: dict[str, Any] = {"from": sender, "id": wamid, "timestamp": str(int(time.time()))}
        if spec.reply_to:
            message["context"] = {"from": channel.business_number.lstrip("+"), "id": spec.reply_to}
        media_info: list[dict[str, Any]] = []
        if spec.kind == "text":
            message["type"] = "text"
            message["text"] = {"body": spec.text}
        elif spec.kind in MEDIA_INBOUND_KINDS:
            media = self._store_media(spec, channel)
            meta_type = "audio" if spec.kind == "voice" else spec.kind
            item: dict[str, Any] = {
                "id": media.id,
                "mime_type": media.mime_type,
                "sha256": base64.b64encode(hashlib.sha256(media.content).digest()).decode(),
            }
            if spec.text and meta_type in ("image", "video", "document"):
                item["caption"] = spec.text
            if meta_type == "document":
                item["filename"] = media.filename or "document.pdf"
            if meta_type == "audio":
                item["voice"] = spec.kind == "voice"
            if meta_type == "sticker":
                item["animated"] = False
            message["type"] = meta_type
            message[meta_type] = item
            media_info.append({"id": media.id, "mime_type": media.mime_type, "size": len(media.content)})
        elif spec.kind == "button":
            assert spec.button is not None
            message["type"] = "button"
            message["button"] = {"payload": spec.button.payload, "text": spec.button.text or spec.button.payload}
        else:
            assert spec.location is not None
            location: dict[str, Any] = {"latitude": spec.location.latitude, "longitude": spec.location.longitude}
            if spec.location.name:
                location["name"] = spec.location.name
            if spec.location.address:
                location["address"] = spec.location.address
            message["type"] = "location"
            message["location"] = location
        value = {
            "messaging_product": "whatsapp",
            "metadata": _metadata(channel),
            "contacts": [{"profile": {"name": spec.name or "Sandbox Customer"}, "wa_id": sender}],
            "messages": [message],
        }
        webhook = self._webhook("inbound", value, channel, wamid, None)
        return InjectedInbound(channel.name, wamid, webhook, media_info)

    def _webhook(
        self, kind: str, value: dict[str, Any], channel: MetaSandboxChannel, message_id: str, status: str | None
    ) -> OutgoingWebhook:
        envelope = {
            "object": "whatsapp_business_account",
            "entry": [{"id": channel.waba_id, "changes": [{"field": "messages", "value": value}]}],
        }
        if self._sandbox.config.meta_ascii_json:
            # Meta escapes non-ASCII; orjson cannot, so the stdlib encoder does it.
            body = json.dumps(envelope, ensure_ascii=True, separators=(",", ":")).encode()
        else:
            body = orjson.dumps(envelope)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "X-Hub-Signature": "sha1=" + hmac.new(channel.app_secret.encode(), body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": meta_signature(channel.app_secret, body),
        }
        url = f"{self._sandbox.config.webhook_base_url}/webhooks/meta"
        return OutgoingWebhook(
            "meta", "inbound" if kind == "inbound" else "status", url, body, headers, message_id, status
        )

    def _channel_for(self, name: str | None) -> MetaSandboxChannel:
        if name is None:
            if not self._sandbox.config.meta:
                raise LookupError("the sandbox has no Meta channel")
            return self._sandbox.config.meta[0]
        if name not in self._by_name:
            raise LookupError(f"no Meta channel named {name!r}")
        return self._by_name[name]

    def _store_media(self, spec: InboundSpec, channel: MetaSandboxChannel) -> StoredMedia:
        media_id = str(secrets.randbelow(9 * 10**15) + 10**15)
        stored = stored_media(
            spec,
            media_id=media_id,
            provider="meta",
            channel=channel.name,
            default_mime=_DEFAULT_MIME,
            placeholder=f"sandbox {spec.kind} {media_id}",
        )
        self._sandbox.media[media_id] = stored
        return stored


def _metadata(channel: MetaSandboxChannel) -> dict[str, str]:
    return {"display_phone_number": channel.business_number.lstrip("+"), "phone_number_id": channel.phone_number_id}


def _bearer_matches(request: web.Request, token: str | None) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# Request checks -----------------------------------------------------------------------------

_DIGITS = re.compile(r"\+?[1-9][0-9]{5,14}")


def _missing(name: str) -> GraphError:
    return GraphError(400, 100, f"The parameter {name} is required.")


def _invalid(name: str, why: str) -> GraphError:
    return GraphError(400, 100, f"Invalid parameter: {name}", details=why)


def _check_mark_read(payload: dict[str, Any]) -> None:
    if payload.get("messaging_product") != "whatsapp":
        raise _missing("messaging_product")
    message_id = payload.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise _missing("message_id")


def _check_send(payload: dict[str, Any]) -> str:
    """Check a send's body as the Graph API would; return the recipient's digits."""
    if payload.get("messaging_product") != "whatsapp":
        raise _missing("messaging_product")
    to = payload.get("to")
    if not isinstance(to, str) or not to:
        raise _missing("to")
    if not _DIGITS.fullmatch(to):
        raise _invalid("to", f"{to!r} is not a phone number in international format")
    message_type = payload.get("type")
    if message_type is None:
        raise _missing("type")
    if message_type not in SEND_TYPES:
        raise GraphError(
            400, 100, f'Param type must be one of {{{", ".join(sorted(SEND_TYPES))}}} - got "{message_type}".'
        )
    content = payload.get(message_type)
    if not isinstance(content, dict):
        raise _missing(message_type)
    if message_type == "text":
        body = content.get("body")
        if not isinstance(body, str) or not body:
            raise _missing("text['body']")
        if len(body) > 4096:
            raise _invalid("text['body']", "Text body is longer than 4096 characters.")
        if "preview_url" in content and not isinstance(content["preview_url"], bool):
            raise _invalid("text['preview_url']", "preview_url must be a boolean.")
    elif message_type in _MEDIA_FIELDS:
        unknown = set(content) - _MEDIA_FIELDS[message_type]
        if unknown:
            raise _invalid(f"{message_type}['{sorted(unknown)[0]}']", f"Not a valid parameter for {message_type}.")
        if ("link" in content) == ("id" in content):
            raise _invalid(message_type, "Exactly one of link or id is required.")
        link = content.get("link")
        if link is not None and (not isinstance(link, str) or not link.startswith(("http://", "https://"))):
            raise _invalid(f"{message_type}['link']", "The link must be an http(s) URL.")
    elif message_type == "template":
        _check_template(content)
    context = payload.get("context")
    if context is not None and (not isinstance(context, dict) or not isinstance(context.get("message_id"), str)):
        raise _missing("context['message_id']")
    return to.lstrip("+")


def _check_template(template: dict[str, Any]) -> None:
    if not isinstance(template.get("name"), str) or not template["name"]:
        raise _missing("template['name']")
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str):
        raise _missing("template['language']['code']")
    components = template.get("components", [])
    if not isinstance(components, list):
        raise _invalid("template['components']", "components must be a list.")
    for component in components:
        if not isinstance(component, dict) or component.get("type") not in _TEMPLATE_COMPONENTS:
            raise _invalid("template['components'][]['type']", "Unknown component type.")
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list) or not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in parameters
        ):
            raise _invalid("template['components'][]['parameters']", "Each parameter needs a type.")
        if component["type"] == "button" and ("sub_type" not in component or "index" not in component):
            raise _missing("template['components'][]['sub_type'/'index']")
