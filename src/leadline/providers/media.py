"""Downloading inbound media from a provider: only from the provider's own hosts, and never past a size cap.

A webhook says where its media is (Twilio's ``MediaUrl``; for Meta, the URL its media lookup answers),
and a crafted webhook could name any address: a cloud metadata service, a database port on localhost.
So every URL, and every hop of a redirect, is checked against the provider's :class:`AllowList` before
a connection is made; credentials go only to the origin the download started at. The body is streamed
to a file, hashed as it arrives, and abandoned as soon as it passes ``max_bytes``.

Each provider's folder holds its allow-list and its fetch steps; this module holds what they share.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp
from yarl import URL

from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.http import parse_retry_after

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
LOOKUP_MAX_BYTES = 64 * 1024
"""A provider's JSON answer about a media item (not the media itself) is never larger than this."""

DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=600.0, sock_connect=5.0, sock_read=30.0)
"""A large file may take minutes; a stalled one is dropped after 30 s without data."""

ErrorFromResponse = Callable[..., ProviderError]
"""A provider's ``(http_status, body, *, retry_after) -> ProviderError`` for a non-2xx answer."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """A media item downloaded to a local file, not yet stored."""

    path: Path
    size: int
    sha256: str
    """Hex SHA-256 of the bytes, computed while they arrived."""
    mime_type: str | None
    """What the provider said the file is (its lookup answer, else the download's Content-Type)."""


@runtime_checkable
class MediaFetcher(Protocol):
    """A provider client that can download the media its webhooks refer to."""

    async def fetch_media(self, ref: str, *, into: Path, max_bytes: int) -> FetchedMedia:
        """Download the media ``ref`` (a Meta media id, a Twilio media URL) into the file ``into``.

        Raises :class:`ProviderError`: ``host_not_allowed`` and ``too_large`` (BAD_REQUEST) for what
        will never succeed; RETRY_LATER for timeouts, refused connections and provider hiccups.
        """
        ...


def too_large(max_bytes: int) -> ProviderError:
    return ProviderError(ErrorClass.BAD_REQUEST, "too_large", f"the media is larger than the {max_bytes}-byte limit")


# --------------------------------------------------------------------------------------------
# The allow-list


@dataclass(frozen=True, slots=True)
class HostRule:
    """Where media may come from: ``host`` exactly, or any subdomain for ``*.example.com``.

    ``port`` None means the scheme's default port. ``path_prefix`` narrows a shared host (a public
    S3 endpoint) to the provider's own bucket.
    """

    host: str
    scheme: str = "https"
    port: int | None = None
    path_prefix: str = "/"

    def matches(self, url: URL) -> bool:
        host = (url.host or "").lower().rstrip(".")
        if url.scheme != self.scheme or url.port != (self.port or _DEFAULT_PORTS.get(self.scheme)):
            return False
        if self.host.startswith("*."):
            suffix = self.host[1:]
            host_ok = host.endswith(suffix) and len(host) > len(suffix)
        else:
            host_ok = host == self.host
        return host_ok and url.path.startswith(self.path_prefix)

    @classmethod
    def origin_of(cls, base_url: str) -> HostRule:
        """The rule admitting exactly the origin (scheme, host, port) of a configured API base URL."""
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        return cls(host=url.host.lower().rstrip("."), scheme=url.scheme, port=url.port)


@dataclass(frozen=True, slots=True)
class AllowList:
    rules: tuple[HostRule, ...]

    def check(self, url: str | URL) -> URL:
        """``url`` parsed, if a rule admits it; else a BAD_REQUEST ``host_not_allowed`` error.

        URLs carrying credentials (``user:pass@``) are refused whatever their host: they are never
        what a provider hands out, and they are a classic way to disguise the real host.
        """
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or not parsed.is_absolute() or parsed.host is None:
            raise ProviderError(ErrorClass.BAD_REQUEST, "host_not_allowed", "the media URL is not an absolute URL")
        if parsed.user is not None or parsed.password is not None:
            raise ProviderError(
                ErrorClass.BAD_REQUEST, "host_not_allowed", f"refused a media URL with credentials ({parsed.host})"
            )
        if not any(rule.matches(parsed) for rule in self.rules):
            where = f"{parsed.scheme}://{parsed.host}:{parsed.port}"
            raise ProviderError(
                ErrorClass.BAD_REQUEST, "host_not_allowed", f"refused to fetch media from {where}: not a provider host"
            )
        return parsed


def with_base_url(rules: tuple[HostRule, ...], api_base_url: str | None) -> AllowList:
    """The provider's own hosts, plus the origin of the channel's configured API (a sandbox, a proxy)."""
    if api_base_url:
        rules = (*rules, HostRule.origin_of(api_base_url))
    return AllowList(rules)


# --------------------------------------------------------------------------------------------
# Fetching


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return url.scheme, url.host, url.port


@asynccontextmanager
async def _get(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    allow: AllowList,
    headers: Mapping[str, str],
    error_from_response: ErrorFromResponse,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following redirects by hand so that every hop passes ``allow`` before it is called.

    ``headers`` (credentials) go to the first origin only, as browsers and HTTP clients do: a provider
    that redirects to its CDN hands out a signed URL there. Yields a 2xx response, body unread.
    """
    current = allow.check(url)
    credentials_for = _origin(current)
    for _ in range(MAX_REDIRECTS + 1):
        sent = dict(headers) if _origin(current) == credentials_for else {}
        try:
            async with session.get(current, headers=sent, allow_redirects=False, timeout=DOWNLOAD_TIMEOUT) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise ProviderError(
                            ErrorClass.RETRY_LATER, "bad_redirect", "a redirect without a Location header"
                        )
                    current = allow.check(current.join(URL(location)))
                    continue
                if not 200 <= response.status < 300:
                    body = await response.content.read(LOOKUP_MAX_BYTES)
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise error_from_response(response.status, body, retry_after=retry_after)
                yield response
                return
        except TimeoutError as exc:
            raise ProviderError(
                ErrorClass.RETRY_LATER, "timeout", f"no answer in time ({type(exc).__name__})"
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                ErrorClass.RETRY_LATER, "connection_error", f"could not reach the provider ({type(exc).__name__})"
            ) from None
    raise ProviderError(ErrorClass.BAD_REQUEST, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects")


async def read_lookup(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    allow: AllowList,
    headers: Mapping[str, str],
    error_from_response: ErrorFromResponse,
) -> bytes:
    """A provider's small answer about a media item (Meta's lookup JSON), at most 64 KiB."""
    async with _get(session, url, allow=allow, headers=headers, error_from_response=error_from_response) as response:
        body = await response.content.read(LOOKUP_MAX_BYTES + 1)
    if len(body) > LOOKUP_MAX_BYTES:
        raise ProviderError(ErrorClass.RETRY_LATER, "malformed_response", "the media lookup answer is too long")
    return body


async def download(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    allow: AllowList,
    headers: Mapping[str, str],
    error_from_response: ErrorFromResponse,
    into: Path,
    max_bytes: int,
    mime_type: str | None = None,
) -> FetchedMedia:
    """Stream ``url`` into the file ``into`` (created or truncated), hashing it, stopping past ``max_bytes``.

    A declared ``Content-Length`` over the cap is refused before any byte is read. On any error the
    file may hold a partial body; the caller owns and removes it.
    """
    async with _get(session, url, allow=allow, headers=headers, error_from_response=error_from_response) as response:
        if response.content_length is not None and response.content_length > max_bytes:
            raise too_large(max_bytes)
        digest = hashlib.sha256()
        size = 0
        try:
            with into.open("wb") as file:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise too_large(max_bytes)
                    digest.update(chunk)
                    file.write(chunk)
        except TimeoutError as exc:
            raise ProviderError(
                ErrorClass.RETRY_LATER, "timeout", f"the download stalled ({type(exc).__name__})"
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                ErrorClass.RETRY_LATER, "connection_error", f"the download broke off ({type(exc).__name__})"
            ) from None
        return FetchedMedia(into, size, digest.hexdigest(), mime_type or response.headers.get("Content-Type"))
