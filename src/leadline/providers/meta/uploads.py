"""The example media of a template's media header, uploaded through Meta's Resumable Upload API.

Meta reviews a media header from an example given as an upload handle (``header_handle``), not a
URL. leadline downloads the definition's example ``url`` and uploads it in two Graph calls (Meta's
"Upload a file" guide, developers.facebook.com/docs/graph-api/guides/upload):

1. ``POST /{app-id}/uploads?file_name=&file_length=&file_type=`` with the access token answers
   ``{"id": "upload:<session>"}``;
2. ``POST /upload:<session>`` with ``Authorization: OAuth <token>``, ``file_offset: 0`` and the bytes as
   the body answers ``{"h": "<handle>"}``, the handle the template's ``example.header_handle`` takes.

The token goes in the ``Authorization`` header of both calls, never in a URL.
"""

from __future__ import annotations

import mimetypes
import posixpath
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlencode, urlsplit

import aiohttp
import orjson

from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.http import HttpAnswer, get, post
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.errors import meta_error_from_response

MediaKind = Literal["image", "video", "document"]

UPLOAD_FILE_TYPES: dict[MediaKind, frozenset[str]] = {
    "image": frozenset({"image/jpeg", "image/jpg", "image/png"}),
    "video": frozenset({"video/mp4"}),
    "document": frozenset({"application/pdf"}),
}
"""The MIME types the Resumable Upload API takes, by the header kind each can be the example of."""

EXAMPLE_MAX_BYTES: dict[MediaKind, int] = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
}
"""The largest example downloaded: WhatsApp's own limits for media of each kind."""


@dataclass(frozen=True, slots=True)
class ExampleMedia:
    """A media header's example, downloaded."""

    content: bytes
    file_type: str
    """The MIME type, one of :data:`UPLOAD_FILE_TYPES` for its kind."""
    file_name: str


async def fetch_example_media(session: aiohttp.ClientSession, url: str, kind: MediaKind) -> ExampleMedia:
    """Download ``url`` (http or https only, at most :data:`EXAMPLE_MAX_BYTES` for ``kind``).

    BAD_REQUEST ProviderError ``invalid_example_media`` when the URL or what it serves cannot be an
    example of ``kind``; ``too_large`` past the limit; transport failures are RETRY_LATER.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _invalid(f"the example URL must be http or https, not {parts.scheme or 'relative'!r}")
    answer = await get(session, url, headers={"Accept": "*/*"}, max_bytes=EXAMPLE_MAX_BYTES[kind])
    if not answer.ok:
        error_class = ErrorClass.RETRY_LATER if answer.status >= 500 or answer.status == 429 else ErrorClass.BAD_REQUEST
        raise ProviderError(
            error_class,
            "example_media_unavailable",
            f"the example media could not be downloaded (HTTP {answer.status})",
            http_status=answer.status,
        )
    if not answer.body:
        raise _invalid("the example URL served an empty body")
    file_name = posixpath.basename(unquote(parts.path)) or f"example-{kind}"
    file_type = _file_type(answer, file_name)
    if file_type not in UPLOAD_FILE_TYPES[kind]:
        accepted = ", ".join(sorted(UPLOAD_FILE_TYPES[kind]))
        raise _invalid(f"the example of a {kind} header must be {accepted}, not {file_type or 'unknown'}")
    return ExampleMedia(answer.body, file_type, file_name)


def _file_type(answer: HttpAnswer, file_name: str) -> str | None:
    served = (answer.content_type or "").lower()
    if served and served != "application/octet-stream":
        return served
    guessed, _ = mimetypes.guess_type(file_name)
    return guessed


def _invalid(message: str) -> ProviderError:
    return ProviderError(ErrorClass.BAD_REQUEST, "invalid_example_media", message)


async def upload_example_media(session: aiohttp.ClientSession, channel: MetaChannelConfig, media: ExampleMedia) -> str:
    """Upload ``media`` through ``channel``'s app and answer its handle (``4::...``).

    CHANNEL_FAILURE ProviderError ``no_app_id`` (or ``no_access_token``) when the channel cannot upload;
    Meta's own refusals are mapped as every Graph error is.
    """
    if not channel.app_id:
        raise ProviderError(
            ErrorClass.CHANNEL_FAILURE, "no_app_id", f"channel {channel.name!r} has no app_id to upload through"
        )
    if channel.access_token is None:
        raise ProviderError(
            ErrorClass.CHANNEL_FAILURE, "no_access_token", f"channel {channel.name!r} has no access_token"
        )
    token = channel.access_token.get_secret_value()
    query = urlencode(
        {"file_name": media.file_name, "file_length": str(len(media.content)), "file_type": media.file_type}
    )
    started = await post(
        session,
        f"{channel.graph_base_url}/{quote(channel.app_id, safe='')}/uploads?{query}",
        body=b"",
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    session_id = _field(started, "id")
    if not session_id.startswith("upload:"):
        raise ProviderError(
            ErrorClass.RETRY_LATER, "malformed_response", "Meta's upload session id does not start with upload:"
        )
    uploaded = await post(
        session,
        f"{channel.graph_base_url}/{quote(session_id, safe=':')}",
        body=media.content,
        content_type=media.file_type,
        headers={"Authorization": f"OAuth {token}", "file_offset": "0"},
    )
    return _field(uploaded, "h")


def _field(answer: HttpAnswer, name: str) -> str:
    if not answer.ok:
        raise meta_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        data = None
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise ProviderError(
            ErrorClass.RETRY_LATER,
            "malformed_response",
            f"the Resumable Upload API answer has no {name!r}",
            http_status=answer.status,
        )
    return value
