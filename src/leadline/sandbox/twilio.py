"""A fake Twilio Messages API for WhatsApp speaking the wire format of PROVIDERS.md B.

Routes, relative to the sandbox root (a Twilio channel's ``api_base_url`` is ``<sandbox>/twilio``):

- ``POST /twilio/2010-04-01/Accounts/{AccountSid}/Messages.json``: sends, checked like Twilio does.
- ``GET /twilio/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{MediaSid}``: the bytes
  of injected inbound media (HTTP Basic auth required).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from aiohttp import web

from leadline.sandbox.config import TwilioSandboxChannel
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

API_VERSION = "2010-04-01"
_WHATSAPP_ADDRESS = re.compile(r"whatsapp:\+[1-9][0-9]{5,14}")
_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")
_DEFAULT_MIME = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg",
    "voice": "audio/ogg",
    "document": "application/pdf",
    "sticker": "image/webp",
}
ERRORS: dict[int, str] = {
    20003: "Authenticate",
    20429: "Too Many Requests",
    21211: "Invalid 'To' Phone Number",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21609: "Invalid StatusCallback url",
    21610: "Attempt to send to unsubscribed recipient",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21619: "A text message body or media URL must be specified.",
    21620: "Invalid media URL(s)",
    21655: "The ContentSid is Invalid.",
    21656: "The ContentVariables Parameter is invalid.",
    21705: "The Messaging Service Sid is invalid.",
    30008: "Unknown error",
    63007: "Twilio could not find a Channel with the specified From address",
    63016: (
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template."
    ),
    63018: "Rate limit exceeded for Channel",
    63024: "Invalid message recipient",
    63027: "Template does not exist for a language and locale",
    63030: "Unsupported parameter for type of channels message",
    63112: "The Meta and/or WhatsApp Business Accounts connected to this Sender were disabled by Meta.",
}
"""Messages of the codes the sandbox answers with or faults commonly inject."""


class TwilioApiError(Exception):
    def __init__(self, http_status: int, code: int, message: str | None = None):
        super().__init__(message or ERRORS.get(code, f"Error {code}"))
        self.http_status = http_status
        self.code = code
        self.message = message or ERRORS.get(code, f"Error {code}")


def twilio_error_response(
    http_status: int, code: int, message: str | None = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "code": code,
        "message": message or ERRORS.get(code, f"Error {code} injected by the sandbox."),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": http_status,
    }
    return web.Response(status=http_status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` per B3, computed here rather than borrowed from leadline so each checks the other.

    Parameters are sorted by name, then value; the sandbox never sends a name twice.
    """
    signed = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _rfc2822_now() -> str:
    return email.utils.formatdate(usegmt=False).replace("-0000", "+0000")


class TwilioFake:
    name: Provider = "twilio"

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._by_name = {c.name: c for c in sandbox.config.twilio}

    def add_routes(self, app: web.Application) -> None:
        base = f"/twilio/{API_VERSION}/Accounts/{{account_sid}}"
        app.router.add_post(f"{base}/Messages.json", self.messages)
        app.router.add_get(f"{base}/Messages/{{message_sid}}/Media/{{media_sid}}", self.media_download)

    # Sending ----------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._sandbox.record("twilio", request, body)
        fault = self._sandbox.take_fault("twilio", sending=True)
        if fault is not None and fault.mode in ("down", "timeout"):
            return await self._fault_response(request, fault)

        account_sid = request.match_info["account_sid"]
        channels = self._authenticated_channels(request, account_sid)
        if not channels:
            return twilio_error_response(401, 20003, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if fault is not None and fault.mode in ("error", "throttle"):
            return await self._fault_response(request, fault)

        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        try:
            channel, fields = _check_send(form, channels)
        except TwilioApiError as exc:
            return twilio_error_response(exc.http_status, exc.code, exc.message)

        sid = new_sid("SM")
        service = fields.get("MessagingServiceSid")
        to = fields["To"]
        if fault is not None and fault.mode == "async_error":
            steps: list[tuple[str, int | None]] = [("failed", fault.code)]
        else:
            steps = [("sent", None), ("delivered", None), ("read", None)]
        self._sandbox.schedule(
            [
                PendingStatus(
                    "twilio",
                    channel.name,
                    sid,
                    status,
                    to.removeprefix("whatsapp:"),
                    error_code=code,
                    status_callback=fields.get("StatusCallback"),
                    messaging_service_sid=service,
                )
                for status, code in steps
            ]
        )
        now = _rfc2822_now()
        media_urls = [value for name, value in form if name == "MediaUrl"]
        answer = {
            "sid": sid,
            "account_sid": account_sid,
            "messaging_service_sid": service,
            "from": None if service else fields.get("From"),
            "to": to,
            "body": fields.get("Body", ""),
            "status": "accepted" if service else "queued",
            "direction": "outbound-api",
            "num_media": str(len(media_urls)),
            "num_segments": "0" if service else "1",
            "error_code": None,
            "error_message": None,
            "price": None,
            "price_unit": None,
            "api_version": API_VERSION,
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json",
            "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media.json"},
        }
        return web.Response(status=201, body=orjson.dumps(answer), content_type="application/json")

    def _authenticated_channels(self, request: web.Request, account_sid: str) -> list[TwilioSandboxChannel]:
        credentials = _basic_credentials(request)
        if credentials is None or credentials[0] != account_sid:
            return []
        return [
            c
            for c in self._sandbox.config.twilio
            if c.account_sid == account_sid and hmac.compare_digest(c.auth_token.encode(), credentials[1].encode())
        ]

    async def _fault_response(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.mode == "timeout":
            return await self._sandbox.hang(request, fault.seconds)
        if fault.mode == "down":
            return web.Response(status=fault.http_status or 503, text="Service Unavailable")
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        code = fault.code if fault.code is not None else 20429
        default_status = 429 if fault.mode == "throttle" else 400
        return twilio_error_response(fault.http_status or default_status, code, fault.message, headers=headers)

    # Media ------------------------------------------------------------------------------

    async def media_download(self, request: web.Request) -> web.StreamResponse:
        self._sandbox.record("twilio", request, b"")
        if not self._authenticated_channels(request, request.match_info["account_sid"]):
            return twilio_error_response(401, 20003, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
        media = self._sandbox.media.get(request.match_info["media_sid"])
        if media is None or media.provider != "twilio":
            return twilio_error_response(404, 20404, "The requested resource was not found")
        return web.Response(body=media.content, content_type=media.mime_type.split(";")[0])

    # Webhooks ---------------------------------------------------------------------------

    def status_webhook(self, pending: PendingStatus) -> OutgoingWebhook:
        channel = self._by_name[pending.channel]
        digits = pending.recipient.lstrip("+")
        params = [
            ("MessageSid", pending.message_id),
            ("SmsSid", pending.message_id),
            ("MessageStatus", pending.status),
            ("SmsStatus", pending.status),
        ]
        if pending.status in ("delivered", "read"):
            params.append(("EventType", pending.status.upper()))
        params += [
            ("AccountSid", channel.account_sid),
            ("From", f"whatsapp:{channel.business_number}"),
            ("To", f"whatsapp:{pending.recipient}"),
            ("ApiVersion", API_VERSION),
            ("ChannelPrefix", "whatsapp"),
            ("ChannelInstallSid", "XE" + hashlib.md5(channel.account_sid.encode(), usedforsecurity=False).hexdigest()),
            ("ChannelToAddress", "+" + digits[:-5] + "XXXXX"),
        ]
        if pending.messaging_service_sid:
            params.append(("MessagingServiceSid", pending.messaging_service_sid))
        if pending.status == "failed":
            params.append(("ErrorCode", str(pending.error_code or 30008)))
        deliver_to, signed_url = self._callback_target(pending.status_callback)
        return self._webhook("status", deliver_to, signed_url, params, channel, pending.message_id, pending.status)

    def inbound_webhook(self, spec: InboundSpec, sandbox_url: str) -> InjectedInbound:
        channel = self._channel_for(spec.channel)
        is_media = spec.kind in MEDIA_INBOUND_KINDS
        sid = spec.message_id or new_sid("MM" if is_media else "SM")
        sender = spec.sender_digits
        params = [
            ("MessageSid", sid),
            ("SmsMessageSid", sid),
            ("SmsSid", sid),
            ("AccountSid", channel.account_sid),
        ]
        if channel.messaging_service_sid:
            params.append(("MessagingServiceSid", channel.messaging_service_sid))
        params += [
            ("From", f"whatsapp:+{sender}"),
            ("To", f"whatsapp:{channel.business_number}"),
            ("WaId", sender),
            ("ProfileName", spec.name or "Sandbox Customer"),
        ]
        media_info: list[dict[str, Any]] = []
        if is_media:
            media = self._store_media(spec, channel, sid)
            url = f"{sandbox_url}/twilio/{API_VERSION}/Accounts/{channel.account_sid}/Messages/{sid}/Media/{media.id}"
            params += [
                ("MessageType", "audio" if spec.kind == "voice" else spec.kind),
                ("Body", spec.text or ""),
                ("NumMedia", "1"),
                ("MediaContentType0", media.mime_type),
                ("MediaUrl0", url),
            ]
            media_info.append({"id": media.id, "url": url, "mime_type": media.mime_type, "size": len(media.content)})
        elif spec.kind == "button":
            assert spec.button is not None
            label = spec.button.text or spec.button.payload
            params += [
                ("MessageType", "interactive"),
                ("Body", label),
                ("ButtonText", label),
                ("ButtonPayload", spec.button.payload),
                ("NumMedia", "0"),
            ]
        elif spec.kind == "location":
            assert spec.location is not None
            params += [
                ("MessageType", "location"),
                ("Body", ""),
                ("NumMedia", "0"),
                ("Latitude", f"{spec.location.latitude}"),
                ("Longitude", f"{spec.location.longitude}"),
            ]
            if spec.location.address:
                params.append(("Address", spec.location.address))
            if spec.location.name:
                params.append(("Label", spec.location.name))
        else:
            params += [("MessageType", "text"), ("Body", spec.text or ""), ("NumMedia", "0")]
        if spec.reply_to:
            params += [
                ("OriginalRepliedMessageSid", spec.reply_to),
                ("OriginalRepliedMessageSender", f"whatsapp:{channel.business_number}"),
            ]
        params += [
            ("SmsStatus", "received"),
            ("NumSegments", "1"),
            ("ReferralNumMedia", "0"),
            ("ApiVersion", API_VERSION),
        ]
        deliver_to, signed_url = self._callback_target(None)
        webhook = self._webhook("inbound", deliver_to, signed_url, params, channel, sid, None)
        return InjectedInbound(channel.name, sid, webhook, media_info)

    def _callback_target(self, status_callback: str | None) -> tuple[str, str]:
        """Where to POST a webhook, and the URL its signature covers.

        A StatusCallback under leadline's public URL is delivered to the same path under
        ``leadline_url`` (the sandbox may not reach the public address) but signed as given,
        which is what Twilio signs; any other StatusCallback is called as is.
        """
        config = self._sandbox.config
        if not status_callback:
            return f"{config.webhook_base_url}/webhooks/twilio", f"{config.public_base_url}/webhooks/twilio"
        if status_callback.startswith(config.public_base_url):
            return config.webhook_base_url + status_callback[len(config.public_base_url) :], status_callback
        return status_callback, status_callback

    def _webhook(
        self,
        kind: str,
        deliver_to: str,
        signed_url: str,
        params: list[tuple[str, str]],
        channel: TwilioSandboxChannel,
        message_id: str,
        status: str | None,
    ) -> OutgoingWebhook:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
            "X-Twilio-Signature": twilio_signature(channel.auth_token, signed_url, params),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
        }
        body = urlencode(params).encode()
        return OutgoingWebhook(
            "twilio", "inbound" if kind == "inbound" else "status", deliver_to, body, headers, message_id, status
        )

    def _channel_for(self, name: str | None) -> TwilioSandboxChannel:
        if name is None:
            if not self._sandbox.config.twilio:
                raise LookupError("the sandbox has no Twilio channel")
            return self._sandbox.config.twilio[0]
        if name not in self._by_name:
            raise LookupError(f"no Twilio channel named {name!r}")
        return self._by_name[name]

    def _store_media(self, spec: InboundSpec, channel: TwilioSandboxChannel, message_sid: str) -> StoredMedia:
        stored = stored_media(
            spec,
            media_id=new_sid("ME"),
            provider="twilio",
            channel=channel.name,
            default_mime=_DEFAULT_MIME,
            placeholder=f"sandbox {spec.kind} {message_sid}",
        )
        self._sandbox.media[stored.id] = stored
        return stored


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _check_send(
    form: list[tuple[str, str]], channels: list[TwilioSandboxChannel]
) -> tuple[TwilioSandboxChannel, dict[str, str]]:
    """Check a send as Twilio would; return the sending channel and the form's (first) values."""
    fields: dict[str, str] = {}
    for name, value in form:
        fields.setdefault(name, value)
    to = fields.get("To")
    if not to:
        raise TwilioApiError(400, 21604)
    if not _WHATSAPP_ADDRESS.fullmatch(to):
        raise TwilioApiError(400, 21211, f"Invalid 'To' Phone Number: {to}")
    service = fields.get("MessagingServiceSid")
    sender = fields.get("From")
    if service:
        matching = [c for c in channels if c.messaging_service_sid == service]
        if not matching:
            raise TwilioApiError(400, 21705)
    elif sender:
        matching = [c for c in channels if f"whatsapp:{c.business_number}" == sender]
        if not matching:
            raise TwilioApiError(400, 63007)
    else:
        raise TwilioApiError(400, 21603)
    body = fields.get("Body", "")
    media_urls = [value for name, value in form if name == "MediaUrl"]
    content_sid = fields.get("ContentSid")
    if not body and not media_urls and not content_sid:
        raise TwilioApiError(400, 21619)
    if len(body) > 1600:
        raise TwilioApiError(400, 21617)
    if any(not url.startswith(("http://", "https://")) for url in media_urls):
        raise TwilioApiError(400, 21620)
    if content_sid is not None and not _CONTENT_SID.fullmatch(content_sid):
        raise TwilioApiError(400, 21655)
    if "ContentVariables" in fields:
        try:
            variables = orjson.loads(fields["ContentVariables"])
        except orjson.JSONDecodeError:
            variables = None
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            raise TwilioApiError(400, 21656)
    callback = fields.get("StatusCallback")
    if callback is not None and not callback.startswith(("http://", "https://")):
        raise TwilioApiError(400, 21609)
    return matching[0], fields
