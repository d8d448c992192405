"""Sending through the WhatsApp Cloud API (PROVIDERS.md A3)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from leadline.config import ChannelConfig
from leadline.domain.messages import MessageId
from leadline.providers.base import ErrorClass, ProviderError, TemplateSend
from leadline.providers.http import HttpAnswer, post
from leadline.providers.media import FetchedMedia
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.errors import meta_error_from_response
from leadline.providers.meta.media import fetch_meta_media

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
_CAPTIONED = frozenset({"image", "video", "document"})
_HEADER_MEDIA = frozenset({"image", "video", "document"})


class MetaClient:
    """A :class:`~leadline.providers.base.MessagingProvider` for one Cloud API phone number.

    Every call is one ``POST {graph_base_url}/{phone_number_id}/messages``. Refusals raise
    :class:`ProviderError` classified by :func:`classify_meta_error`; timeouts and connection
    failures raise it as RETRY_LATER. The access token only ever goes into the request header.
    """

    def __init__(self, channel: MetaChannelConfig, session: aiohttp.ClientSession) -> None:
        self._channel = channel
        self._session = session
        self._url = f"{channel.graph_base_url}/{channel.phone_number_id}/messages"

    @classmethod
    def for_channel(cls, channel: ChannelConfig, session: aiohttp.ClientSession) -> MetaClient:
        """The plugin's ``make_client``: a client for a channel the registry validated as Meta's."""
        if not isinstance(channel, MetaChannelConfig):
            raise TypeError(f"channel {channel.name!r} is not a Meta channel")
        return cls(channel, session)

    @property
    def channel(self) -> MetaChannelConfig:
        return self._channel

    async def send_text(
        self, to: str, text: str, *, preview_url: bool = False, reply_to: str | None = None
    ) -> MessageId:
        text_object: dict[str, Any] = {"body": text}
        if preview_url:
            text_object["preview_url"] = True
        return await self._send(to, "text", text_object, reply_to)

    async def send_template(self, to: str, template: TemplateSend, *, reply_to: str | None = None) -> MessageId:
        return await self._send(to, "template", template_object(template), reply_to)

    async def send_media(
        self,
        to: str,
        kind: str,
        url: str,
        *,
        caption: str | None = None,
        filename: str | None = None,
        reply_to: str | None = None,
    ) -> MessageId:
        """Send media by link. ``voice`` goes out as ``audio`` (an OGG/Opus file shows as a voice note).

        Meta takes a caption only on image, video and document, and a filename only on document;
        for other kinds they are left out rather than refused.
        """
        media_type = "audio" if kind == "voice" else kind
        if media_type not in MEDIA_TYPES:
            raise ProviderError(ErrorClass.BAD_REQUEST, "unsupported_media_kind", f"cannot send {kind!r} as media")
        media: dict[str, Any] = {"link": url}
        if caption and media_type in _CAPTIONED:
            media["caption"] = caption
        if filename and media_type == "document":
            media["filename"] = filename
        return await self._send(to, media_type, media, reply_to)

    async def mark_read(self, provider_message_id: str) -> None:
        """Mark an inbound message (and the earlier ones of the chat) as read: blue ticks for the customer."""
        body = {"messaging_product": "whatsapp", "status": "read", "message_id": provider_message_id}
        await self._post(body)

    async def fetch_media(self, ref: str, *, into: Path, max_bytes: int) -> FetchedMedia:
        """Download inbound media by its media id (see :mod:`leadline.providers.meta.media`)."""
        return await fetch_meta_media(self._session, self._channel, ref, into=into, max_bytes=max_bytes)

    async def _send(self, to: str, message_type: str, content: Mapping[str, Any], reply_to: str | None) -> MessageId:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "to": wa_recipient(to),
            "type": message_type,
            message_type: content,
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        answer = await self._post(body)
        return _message_id(answer)

    async def _post(self, body: Mapping[str, Any]) -> HttpAnswer:
        token = self._channel.access_token
        if token is None:
            raise ProviderError(
                ErrorClass.CHANNEL_FAILURE,
                "no_access_token",
                f"channel {self._channel.name!r} has no access_token and can only receive",
            )
        answer = await post(
            self._session,
            self._url,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
        )
        if not answer.ok:
            raise meta_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
        return answer


def wa_recipient(to: str) -> str:
    """The ``to`` of a send: E.164 digits without ``+`` (a ``whatsapp:`` prefix is tolerated)."""
    digits = to.strip().removeprefix("whatsapp:").strip().removeprefix("+")
    if not digits.isdigit():
        raise ProviderError(ErrorClass.BAD_REQUEST, "invalid_recipient", "the recipient is not an E.164 number")
    return digits


def template_object(template: TemplateSend) -> dict[str, Any]:
    """The ``template`` object of a send.

    Body parameters are either positional (``{{1}}``, ``{{2}}``...) or named (``parameter_name``);
    a template has one kind, so giving both is refused. ``header`` and ``buttons`` accept a
    provider-neutral form (see :func:`header_component`, :func:`button_component`) or a component
    already in Graph form (a mapping with ``parameters``).
    """
    if template.body_parameters and template.named_parameters:
        raise ProviderError(
            ErrorClass.BAD_REQUEST,
            "mixed_template_parameters",
            f"template {template.name!r} got both positional and named body parameters",
        )
    components: list[dict[str, Any]] = []
    if template.header:
        components.append(header_component(template.header))
    body_parameters = [{"type": "text", "text": value} for value in template.body_parameters] + [
        {"type": "text", "text": value, "parameter_name": name} for name, value in template.named_parameters.items()
    ]
    if body_parameters:
        components.append({"type": "body", "parameters": body_parameters})
    components.extend(button_component(button, position) for position, button in enumerate(template.buttons))
    result: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if components:
        result["components"] = components
    return result


def header_component(header: Mapping[str, Any]) -> dict[str, Any]:
    """A header component from ``{"type": "text", "text": ..., "parameter_name"?: ...}``,
    ``{"type": "image"|"video"|"document", "url"|"link": ..., "filename"?: ...}``, a Graph parameter
    (``{"type": "image", "image": {...}}``) or a Graph component (``{"parameters": [...]}``)."""
    if "parameters" in header:
        return {**header, "type": "header"}
    kind = header.get("type")
    if kind == "text":
        parameter: dict[str, Any] = {"type": "text", "text": header.get("text")}
        if header.get("parameter_name"):
            parameter["parameter_name"] = header["parameter_name"]
    elif isinstance(kind, str) and kind in _HEADER_MEDIA:
        if isinstance(header.get(kind), Mapping):
            parameter = {"type": kind, kind: dict(header[kind])}
        else:
            media: dict[str, Any] = {"link": header.get("link") or header.get("url")}
            if kind == "document" and header.get("filename"):
                media["filename"] = header["filename"]
            parameter = {"type": kind, kind: media}
    else:
        raise ProviderError(ErrorClass.BAD_REQUEST, "invalid_template_header", f"unsupported header type {kind!r}")
    return {"type": "header", "parameters": [parameter]}


def button_component(button: Mapping[str, Any], position: int) -> dict[str, Any]:
    """A button component from ``{"sub_type": "quick_reply", "payload": ...}``,
    ``{"sub_type": "url", "text": <url suffix>}``, ``{"sub_type": "copy_code", "coupon_code": ...}``
    (``index`` defaults to the button's position in ``buttons``) or a Graph component with ``parameters``."""
    index = str(button.get("index", position))
    sub_type = button.get("sub_type", "quick_reply")
    if "parameters" in button:
        return {**button, "type": "button", "sub_type": sub_type, "index": index}
    parameter: dict[str, Any]
    if sub_type == "quick_reply":
        parameter = {"type": "payload", "payload": button.get("payload")}
    elif sub_type == "url":
        parameter = {"type": "text", "text": button.get("text")}
    elif sub_type == "copy_code":
        parameter = {"type": "coupon_code", "coupon_code": button.get("coupon_code")}
    else:
        raise ProviderError(ErrorClass.BAD_REQUEST, "invalid_template_button", f"unsupported button {sub_type!r}")
    return {"type": "button", "sub_type": sub_type, "index": index, "parameters": [parameter]}


def _message_id(answer: HttpAnswer) -> MessageId:
    try:
        data = orjson.loads(answer.body)
        message_id = data["messages"][0]["id"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        message_id = None
    if not isinstance(message_id, str) or not message_id:
        # The send may have gone through; RETRY_LATER lets the caller's bounded retries decide.
        raise ProviderError(
            ErrorClass.RETRY_LATER,
            "malformed_response",
            "the Graph API accepted the call but its answer has no messages[0].id",
            http_status=answer.status,
        )
    return MessageId(message_id)
