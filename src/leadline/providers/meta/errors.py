"""What a Graph API error means for leadline.

Decisions are keyed on ``error.code`` (never on message text), following PROVIDERS.md A4 and the
error groups of section C. Where this table departs from C, on purpose:

- 190 (token expired), 0 (auth exception), 10 and 200-299 (permissions) are CHANNEL_FAILURE, not
  request failures: nothing about the message is wrong, every send on the channel fails until
  someone fixes its credentials, so the channel is what has to be taken out of rotation.
- 131049 (held back for "healthy ecosystem engagement") is RETRY_LATER with a 24 h hint: it is a
  per-user cap, so another route to the same WhatsApp user would be held back as well.
- 131005 (access denied) stays a BAD_REQUEST as in C: it is answered for calls the token may not
  make, which a caller fixes in what it asks for.
- Unknown codes are RETRY_LATER; the caller bounds retries and alerts when they run out.
"""

from __future__ import annotations

from typing import Any

import orjson

from leadline.providers.base import ErrorClass, ProviderError, numeric_code

_RETRY_LATER = frozenset({130429, 131056, 4, 80007, 133016, 131000, 131016, 1, 2, 131052, 131049})
_NEEDS_TEMPLATE = frozenset({131047})
_RECIPIENT_UNREACHABLE = frozenset({131026, 131050, 130472, 131021})
_CHANNEL_FAILURE = frozenset({131042, 131031, 190, 368, 131048, 0, 10})
_PERMISSION_CODES = range(200, 300)
_BAD_REQUEST = frozenset(
    {
        100,
        131005,
        131008,
        131009,
        131030,
        131051,
        131053,
        132000,
        132001,
        132005,
        132007,
        132008,
        132012,
        132015,
        132016,
    }
)

RETRY_HINTS: dict[int, float] = {
    130429: 1.0,  # the number's messages-per-second budget refills every second
    131056: 6.0,  # about one message every 6 s to the same user (A6)
    4: 60.0,  # app-level call rate limit: Graph counts over a rolling window
    80007: 60.0,  # WABA rate limit, same kind of window
    133016: 3600.0,  # register/deregister attempts are counted per hour
    131049: 86400.0,  # per-user marketing cap: "not for at least 24 h"
}
"""Seconds to wait before the next attempt, for the codes where Meta's documentation suggests one."""


def classify_meta_error(code: int | str, http_status: int | None) -> ErrorClass:
    """The class of a Graph API error ``code`` (an int or its string form).

    ``http_status`` decides only when the code is unknown or not numeric (a transport failure such
    as ``"timeout"``, a body that was not Graph JSON): 401/403 mean the channel's credentials are
    refused; anything else, 5xx and 429 included, is worth another bounded try.
    """
    number = numeric_code(code)
    if number is not None:
        if number in _RETRY_LATER:
            return ErrorClass.RETRY_LATER
        if number in _NEEDS_TEMPLATE:
            return ErrorClass.NEEDS_TEMPLATE
        if number in _RECIPIENT_UNREACHABLE:
            return ErrorClass.RECIPIENT_UNREACHABLE
        if number in _CHANNEL_FAILURE or number in _PERMISSION_CODES:
            return ErrorClass.CHANNEL_FAILURE
        if number in _BAD_REQUEST:
            return ErrorClass.BAD_REQUEST
    if http_status in (401, 403):
        return ErrorClass.CHANNEL_FAILURE
    return ErrorClass.RETRY_LATER


def meta_error_from_response(http_status: int, body: bytes, *, retry_after: float | None = None) -> ProviderError:
    """The :class:`ProviderError` for a non-2xx Graph API answer.

    Reads ``{"error": {"code", "message", "error_subcode", "error_data": {"details"}}}``; a body
    that is not in that shape (a proxy's HTML page, an empty 503) yields code ``http_<status>``.
    ``retry_after`` (from a ``Retry-After`` header) wins over the per-code hint.
    """
    error = _graph_error(body)
    raw_code = error.get("code") if error else None
    if isinstance(raw_code, int | str) and not isinstance(raw_code, bool) and str(raw_code).strip():
        code = str(raw_code).strip()
    else:
        code = f"http_{http_status}"
    message = _describe(error) if error else f"HTTP {http_status} without a Graph error body"
    number = numeric_code(code)
    hint = retry_after if retry_after is not None else (RETRY_HINTS.get(number) if number is not None else None)
    return ProviderError(
        classify_meta_error(code, http_status),
        code,
        message,
        http_status=http_status,
        retry_after=hint,
    )


def _graph_error(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _describe(error: dict[str, Any]) -> str:
    message = error.get("message")
    text = message if isinstance(message, str) and message else "Graph API error"
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    if isinstance(details, str) and details and details not in text:
        text = f"{text}: {details}"
    subcode = error.get("error_subcode")
    if isinstance(subcode, int | str) and not isinstance(subcode, bool):
        text = f"{text} (subcode {subcode})"
    return text
