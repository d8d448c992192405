"""Downloading inbound media from Twilio (PROVIDERS.md B1: ``MediaUrl{N}``, HTTP Basic auth).

``GET MediaUrl`` on ``api.twilio.com`` with the account's credentials; Twilio answers with the bytes or
redirects to a short-lived URL on its CDN (``mms.twiliocdn.com``; older media on the public S3
endpoint under the ``media.twiliocdn.com`` bucket), which gets no credentials.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.media import AllowList, FetchedMedia, HostRule, download, with_base_url
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.errors import twilio_error_from_response

TWILIO_MEDIA_HOSTS: tuple[HostRule, ...] = (
    HostRule("api.twilio.com"),
    HostRule("media.twiliocdn.com"),
    HostRule("mms.twiliocdn.com"),
    HostRule("*.twiliocdn.com"),
    HostRule("s3-external-1.amazonaws.com", path_prefix="/media.twiliocdn.com/"),
)
"""Twilio's own hosts, over HTTPS on the default port. The S3 endpoint is shared by every AWS customer,
so only Twilio's bucket on it is admitted."""


def twilio_media_allow_list(channel: TwilioChannelConfig) -> AllowList:
    return with_base_url(TWILIO_MEDIA_HOSTS, channel.api_base_url)


def _media_error(http_status: int, body: bytes, *, retry_after: float | None = None) -> ProviderError:
    if http_status in (404, 410):
        return ProviderError(
            ErrorClass.BAD_REQUEST, "media_not_found", "Twilio no longer has this media", http_status=http_status
        )
    return twilio_error_from_response(http_status, body, retry_after=retry_after)


async def fetch_twilio_media(
    session: aiohttp.ClientSession,
    channel: TwilioChannelConfig,
    media_url: str,
    *,
    into: Path,
    max_bytes: int,
) -> FetchedMedia:
    auth = aiohttp.encode_basic_auth(channel.account_sid, channel.auth_token.get_secret_value())
    return await download(
        session,
        media_url,
        allow=twilio_media_allow_list(channel),
        headers={"Authorization": auth},
        error_from_response=_media_error,
        into=into,
        max_bytes=max_bytes,
    )
