"""Sending through Twilio's Messages API for WhatsApp (PROVIDERS.md B4)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson

from leadline.config import ChannelConfig
from leadline.domain.messages import MessageId
from leadline.providers.base import ErrorClass, ProviderError, TemplateSend
from leadline.providers.http import post
from leadline.providers.media import FetchedMedia
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.errors import twilio_error_from_response
from leadline.providers.twilio.media import fetch_twilio_media

MEDIA_KINDS = frozenset({"image", "video", "audio", "voice", "document", "sticker"})


class TwilioClient:
    """A :class:`~leadline.providers.base.MessagingProvider` for one Twilio WhatsApp sender.

    Every send is one form-encoded ``POST .../2010-04-01/Accounts/{AccountSid}/Messages.json`` with
    HTTP Basic auth. The sender is the channel's Messaging Service when it has one (Twilio pairs
    Content SIDs with a Messaging Service), else ``whatsapp:<business_number>``.

    What the Messages API has no place for, and is therefore dropped:

    - ``reply_to``: a send cannot quote an earlier message.
    - ``preview_url``: WhatsApp decides on link previews itself.
    - ``filename`` of media: the recipient sees the name from the media URL.
    - ``TemplateSend.header``/``buttons``: a Content template carries its header and buttons; their
      variable parts are content variables like any other.
    """

    def __init__(
        self,
        channel: TwilioChannelConfig,
        session: aiohttp.ClientSession,
        status_callback_url: str | None = None,
    ) -> None:
        self._channel = channel
        self._session = session
        self._status_callback_url = status_callback_url
        self._url = f"{channel.messages_base_url}/2010-04-01/Accounts/{channel.account_sid}/Messages.json"
        self._auth_header = aiohttp.encode_basic_auth(channel.account_sid, channel.auth_token.get_secret_value())

    @classmethod
    def for_channel(
        cls, channel: ChannelConfig, session: aiohttp.ClientSession, status_callback_url: str | None = None
    ) -> TwilioClient:
        """The plugin's ``make_client``: a client for a channel the registry validated as Twilio's.

        Without ``status_callback_url`` Twilio calls the sender's (or Messaging Service's) configured
        status callback URL.
        """
        if not isinstance(channel, TwilioChannelConfig):
            raise TypeError(f"channel {channel.name!r} is not a Twilio channel")
        return cls(channel, session, status_callback_url)

    @property
    def channel(self) -> TwilioChannelConfig:
        return self._channel

    async def send_text(
        self, to: str, text: str, *, preview_url: bool = False, reply_to: str | None = None
    ) -> MessageId:
        return await self._send(to, [("Body", text)])

    async def send_template(self, to: str, template: TemplateSend, *, reply_to: str | None = None) -> MessageId:
        if not template.provider_template_id:
            raise ProviderError(
                ErrorClass.BAD_REQUEST,
                "missing_content_sid",
                f"template {template.name!r} has no Twilio Content SID (provider_template_id)",
            )
        fields = [("ContentSid", template.provider_template_id)]
        variables = content_variables(template)
        if variables:
            fields.append(("ContentVariables", variables))
        return await self._send(to, fields)

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
        """Send media by URL; Twilio takes the kind from the file's content type and the caption from ``Body``."""
        if kind not in MEDIA_KINDS:
            raise ProviderError(ErrorClass.BAD_REQUEST, "unsupported_media_kind", f"cannot send {kind!r} as media")
        fields = [("MediaUrl", url)]
        if caption:
            fields.append(("Body", caption))
        return await self._send(to, fields)

    async def mark_read(self, provider_message_id: str) -> None:
        """Does nothing: the Messages API has no read receipt for WhatsApp.

        The only way Twilio marks a message read is the typing-indicator endpoint (public beta,
        ``messaging.twilio.com/v2/Indicators/Typing.json``), which also shows "typing…" to the
        customer for up to 25 s; that is a promise of a reply this method cannot make.
        """

    async def fetch_media(self, ref: str, *, into: Path, max_bytes: int) -> FetchedMedia:
        """Download inbound media by its ``MediaUrl`` (see :mod:`leadline.providers.twilio.media`)."""
        return await fetch_twilio_media(self._session, self._channel, ref, into=into, max_bytes=max_bytes)

    async def _send(self, to: str, content: list[tuple[str, str]]) -> MessageId:
        fields = [("To", whatsapp_address(to)), *self._sender(), *content]
        if self._status_callback_url:
            fields.append(("StatusCallback", self._status_callback_url))
        answer = await post(
            self._session,
            self._url,
            body=urlencode(fields).encode(),
            content_type="application/x-www-form-urlencoded",
            headers={"Authorization": self._auth_header},
        )
        if not answer.ok:
            raise twilio_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
        try:
            sid = orjson.loads(answer.body).get("sid")
        except (orjson.JSONDecodeError, AttributeError):
            sid = None
        if not isinstance(sid, str) or not sid:
            # The message may exist; RETRY_LATER lets the caller's bounded retries decide.
            raise ProviderError(
                ErrorClass.RETRY_LATER,
                "malformed_response",
                "Twilio accepted the call but its answer has no sid",
                http_status=answer.status,
            )
        return MessageId(sid)

    def _sender(self) -> list[tuple[str, str]]:
        if self._channel.messaging_service_sid:
            return [("MessagingServiceSid", self._channel.messaging_service_sid)]
        return [("From", whatsapp_address(self._channel.business_number))]


def whatsapp_address(number: str) -> str:
    """``whatsapp:+<E.164 digits>`` from an E.164 number (with or without ``+`` or the prefix)."""
    digits = number.strip().removeprefix("whatsapp:").strip().removeprefix("+")
    if not digits.isdigit():
        raise ProviderError(ErrorClass.BAD_REQUEST, "invalid_recipient", "the recipient is not an E.164 number")
    return f"whatsapp:+{digits}"


def content_variables(template: TemplateSend) -> str | None:
    """``ContentVariables``: a JSON string, positional parameters under ``"1"``, ``"2"``..., named ones by name."""
    variables = {str(position): value for position, value in enumerate(template.body_parameters, start=1)}
    variables.update(template.named_parameters)
    return orjson.dumps(variables).decode() if variables else None
