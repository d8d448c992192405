"""What a Twilio error means for leadline.

Keyed on Twilio's numeric ``code`` (never on message text), following PROVIDERS.md B5 and the error
groups of section C. Where the reference is ambiguous or where this table departs from it:

- 63014 (blocked by the user) is RECIPIENT_UNREACHABLE; 63005 (channel did not accept the content)
  and 63013 (policy violation) are BAD_REQUEST: B5 calls all three "permanent", but only the first
  is about the person; the other two fail for the content and would fail on any route.
- 63032 ("WhatsApp limitation" for this user) is RETRY_LATER with a 24 h hint: it is a per-user cap
  (Meta's 131049 seen through Twilio), so routing elsewhere reaches the same limit.
- 30007 (filtered as spam) is CHANNEL_FAILURE, like Meta's 131048: the sender is being filtered.
- 30003 and 30008 are RETRY_LATER; C allows them one retry, which the caller's bound enforces.
- HTTP 401/403 and 20003 (authentication) are CHANNEL_FAILURE: the channel's credentials are refused.
- 21408 (region not enabled) is BAD_REQUEST: it concerns that destination, not every send.
- Unknown codes are RETRY_LATER; the caller bounds retries and alerts when they run out.
"""

from __future__ import annotations

from typing import Any

import orjson

from leadline.providers.base import ErrorClass, ProviderError, numeric_code

_RETRY_LATER = frozenset({20429, 63018, 30003, 30008, 63032})
_NEEDS_TEMPLATE = frozenset({63016})
_RECIPIENT_UNREACHABLE = frozenset({63024, 21211, 21614, 21610, 30005, 30006, 63014})
_CHANNEL_FAILURE = frozenset(
    {
        63112,  # the WhatsApp Business Account behind the sender is disabled or restricted
        30007,
        20003,  # authentication failed
        21212,  # the From address is not valid for this account
        63007,  # no WhatsApp sender for the From address
    }
)
_BAD_REQUEST = frozenset(
    {
        63027,
        63030,
        63025,
        63019,
        63021,
        63005,
        63013,
        21408,
        21617,  # body longer than 1,600 characters
        21619,  # neither Body, MediaUrl nor ContentSid
        21656,  # ContentVariables is not a valid JSON object
    }
)

RETRY_HINTS: dict[int, float] = {
    20429: 1.0,  # concurrency limit: a slot frees up as soon as another request finishes
    63018: 1.0,  # per-second WhatsApp throughput of the sender
    63032: 86400.0,
}
"""Seconds to wait before the next attempt where the code implies one; ``Retry-After`` wins."""


def classify_twilio_error(code: int | str, http_status: int | None) -> ErrorClass:
    """The class of a Twilio error ``code`` (an int or its string form).

    ``http_status`` decides when the code is unknown or not numeric: 401/403 mean the credentials
    are refused (CHANNEL_FAILURE); anything else, 429 and 5xx included, is worth another bounded try.
    """
    number = numeric_code(code)
    if number is not None:
        if number in _RETRY_LATER:
            return ErrorClass.RETRY_LATER
        if number in _NEEDS_TEMPLATE:
            return ErrorClass.NEEDS_TEMPLATE
        if number in _RECIPIENT_UNREACHABLE:
            return ErrorClass.RECIPIENT_UNREACHABLE
        if number in _CHANNEL_FAILURE:
            return ErrorClass.CHANNEL_FAILURE
        if number in _BAD_REQUEST:
            return ErrorClass.BAD_REQUEST
    if http_status in (401, 403):
        return ErrorClass.CHANNEL_FAILURE
    return ErrorClass.RETRY_LATER


def twilio_error_from_response(http_status: int, body: bytes, *, retry_after: float | None = None) -> ProviderError:
    """The :class:`ProviderError` for a non-2xx answer of Twilio's REST API.

    Reads the classic ``{"code", "message", "more_info", "status"}`` and the RFC 9457 variant
    (``type``, ``title``, ``status``, ``code``, ``detail``); anything else yields code
    ``http_<status>``. ``retry_after`` (from a ``Retry-After`` header) wins over the per-code hint.
    """
    data = _json_object(body)
    raw_code = data.get("code") if data else None
    if isinstance(raw_code, int | str) and not isinstance(raw_code, bool) and str(raw_code).strip():
        code = str(raw_code).strip()
    else:
        code = f"http_{http_status}"
    number = numeric_code(code)
    hint = retry_after if retry_after is not None else (RETRY_HINTS.get(number) if number is not None else None)
    return ProviderError(
        classify_twilio_error(code, http_status),
        code,
        _describe(data) if data else f"HTTP {http_status} without a Twilio error body",
        http_status=http_status,
        retry_after=hint,
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _describe(data: dict[str, Any]) -> str:
    parts = [value for key in ("message", "title", "detail") if isinstance(value := data.get(key), str) and value]
    # The RFC 9457 form often repeats the title inside the detail; keep each text once.
    unique = [part for i, part in enumerate(parts) if not any(part in other for other in parts[:i])]
    return ": ".join(unique) or "Twilio API error"
