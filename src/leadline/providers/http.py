"""HTTP plumbing the provider clients share: one pooled session per channel and one way to call out.

Transport failures (timeouts, refused or reset connections) become :class:`ProviderError` with
:attr:`ErrorClass.RETRY_LATER` here, so each client only has to map the provider's own answers.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from leadline.providers.base import ErrorClass, ProviderError

USER_AGENT = "leadline/0.1"

_MAX_CONNECT_SECONDS = 5.0


def new_client_session(timeout_seconds: float = 10.0, limit: int = 100) -> aiohttp.ClientSession:
    """A pooled session for one channel: at most ``limit`` open connections, every call bounded.

    ``timeout_seconds`` bounds a whole call (connect, send, wait, read); connecting alone gets at most
    5 s of it, so an unreachable host fails fast instead of eating the budget. Create it inside a
    running event loop and close it when the channel goes away.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=min(timeout_seconds, _MAX_CONNECT_SECONDS))
    # DNS answers are cached because every call of a channel goes to the same one or two hosts.
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT},
        # Provider answers are parsed by us, not by aiohttp; raising on status would lose the body.
        raise_for_status=False,
    )


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A provider's answer, read in full."""

    status: int
    body: bytes
    retry_after: float | None
    """Seconds from the ``Retry-After`` header, when the provider sent one."""
    content_type: str | None = None
    """The media type of the body (``image/png``), parameters left out; None when not given."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str] | None = None,
) -> HttpAnswer:
    """POST ``body`` and read the whole answer; transport failures raise a RETRY_LATER ProviderError.

    The error messages name the failure's type only: an exception's text can carry the URL, and
    nothing here may ever echo an ``Authorization`` header.
    """
    all_headers = {"Content-Type": content_type, "Accept": "application/json"}
    if headers:
        all_headers.update(headers)
    try:
        async with session.post(url, data=body, headers=all_headers) as response:
            payload = await response.read()
            return HttpAnswer(response.status, payload, parse_retry_after(response.headers.get("Retry-After")))
    except TimeoutError as exc:
        # Checked first: aiohttp's own timeout errors are also connection errors.
        raise ProviderError(ErrorClass.RETRY_LATER, "timeout", f"no answer in time ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise ProviderError(
            ErrorClass.RETRY_LATER, "connection_error", f"could not reach the provider ({type(exc).__name__})"
        ) from None


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
) -> HttpAnswer:
    """GET ``url`` and read the whole answer; failures are reported as :func:`post` reports them.

    With ``max_bytes``, an answer longer than that is abandoned as soon as it passes it, with a
    BAD_REQUEST ProviderError ``too_large``.
    """
    all_headers = {"Accept": "application/json"}
    if headers:
        all_headers.update(headers)
    try:
        async with session.get(url, params=params, headers=all_headers) as response:
            if max_bytes is None:
                payload = await response.read()
            else:
                payload = await _read_capped(response, max_bytes)
            return HttpAnswer(
                response.status,
                payload,
                parse_retry_after(response.headers.get("Retry-After")),
                response.content_type if response.headers.get("Content-Type") else None,
            )
    except TimeoutError as exc:
        raise ProviderError(ErrorClass.RETRY_LATER, "timeout", f"no answer in time ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise ProviderError(
            ErrorClass.RETRY_LATER, "connection_error", f"could not reach the provider ({type(exc).__name__})"
        ) from None


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    # content.read(n) answers with what has arrived so far, so the chunks are gathered up to the end.
    too_large = ProviderError(
        ErrorClass.BAD_REQUEST, "too_large", f"the answer is larger than the {max_bytes}-byte limit"
    )
    if response.content_length is not None and response.content_length > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_object(answer: HttpAnswer, source: str) -> dict[str, Any]:
    """A provider's successful answer as a JSON object; anything else is the provider misbehaving."""
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError(
            ErrorClass.RETRY_LATER,
            "malformed_response",
            f"{source} answer is not a JSON object",
            http_status=answer.status,
        )
    return data
