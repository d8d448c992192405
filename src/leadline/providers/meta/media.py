"""Downloading inbound media from the WhatsApp Cloud API (PROVIDERS.md A3, "Media download").

Two steps, both with the channel's bearer token: ``GET {graph}/{media_id}`` answers JSON with a
short-lived ``url`` (on ``lookaside.fbsbx.com``), and ``GET <url>`` answers the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.media import AllowList, FetchedMedia, HostRule, download, read_lookup, too_large, with_base_url
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.errors import meta_error_from_response

META_MEDIA_HOSTS: tuple[HostRule, ...] = (
    HostRule("graph.facebook.com"),
    HostRule("lookaside.fbsbx.com"),
    HostRule("*.fbsbx.com"),
    HostRule("*.fbcdn.net"),
    HostRule("*.whatsapp.net"),
)
"""Meta's own hosts, over HTTPS on the default port: the Graph API, the lookaside media host and the CDNs
that serve WhatsApp media."""

_MEDIA_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")


def meta_media_allow_list(channel: MetaChannelConfig) -> AllowList:
    return with_base_url(META_MEDIA_HOSTS, channel.api_base_url)


def _media_error(http_status: int, body: bytes, *, retry_after: float | None = None) -> ProviderError:
    if http_status in (404, 410):
        # Gone from the CDN: the URL or the media id expired (ids live 7 days); asking again cannot help.
        return ProviderError(
            ErrorClass.BAD_REQUEST, "media_not_found", "Meta no longer has this media", http_status=http_status
        )
    return meta_error_from_response(http_status, body, retry_after=retry_after)


async def fetch_meta_media(
    session: aiohttp.ClientSession, channel: MetaChannelConfig, media_id: str, *, into: Path, max_bytes: int
) -> FetchedMedia:
    token = channel.access_token
    if token is None:
        raise ProviderError(
            ErrorClass.CHANNEL_FAILURE, "no_access_token", f"channel {channel.name!r} has no access_token"
        )
    if not _MEDIA_ID.fullmatch(media_id):
        raise ProviderError(ErrorClass.BAD_REQUEST, "invalid_media_ref", "the media id is not a Graph object id")
    allow = meta_media_allow_list(channel)
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    body = await read_lookup(
        session,
        f"{channel.graph_base_url}/{media_id}",
        allow=allow,
        headers={**headers, "Accept": "application/json"},
        error_from_response=_media_error,
    )
    info = _lookup(body)
    declared_size = info.get("file_size")
    if isinstance(declared_size, int) and declared_size > max_bytes:
        raise too_large(max_bytes)
    mime_type = info.get("mime_type") if isinstance(info.get("mime_type"), str) else None
    fetched = await download(
        session,
        info["url"],
        allow=allow,
        headers=headers,
        error_from_response=_media_error,
        into=into,
        max_bytes=max_bytes,
        mime_type=mime_type,
    )
    expected = _sha256_hex(info.get("sha256"))
    if expected is not None and expected != fetched.sha256:
        raise ProviderError(
            ErrorClass.RETRY_LATER, "checksum_mismatch", "the downloaded bytes do not match Meta's sha256"
        )
    return fetched


def _lookup(body: bytes) -> dict[str, Any]:
    try:
        info = orjson.loads(body)
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str) or not info["url"]:
        raise ProviderError(ErrorClass.RETRY_LATER, "malformed_response", "the media lookup answer has no url")
    return info


def _sha256_hex(value: Any) -> str | None:
    """Meta's ``sha256`` (base64 of the digest; hex tolerated) as hex, or None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None
