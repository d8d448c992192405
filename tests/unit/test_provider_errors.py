"""Provider error codes map to what leadline does next: retry, template, give up on the recipient, or the channel."""

from __future__ import annotations

import orjson
import pytest

from leadline.providers.base import ErrorClass
from leadline.providers.meta.errors import classify_meta_error, meta_error_from_response
from leadline.providers.twilio.errors import classify_twilio_error, twilio_error_from_response

RETRY = ErrorClass.RETRY_LATER
TEMPLATE = ErrorClass.NEEDS_TEMPLATE
RECIPIENT = ErrorClass.RECIPIENT_UNREACHABLE
CHANNEL = ErrorClass.CHANNEL_FAILURE
BAD = ErrorClass.BAD_REQUEST

META_CODES = [
    # Retry later (same provider, back-off)
    *[(code, 400, RETRY) for code in (130429, 131056, 4, 80007, 133016, 131052, 131049)],
    *[(code, 500, RETRY) for code in (131000, 131016, 1, 2)],
    (130429, 429, RETRY),
    # Needs a template
    (131047, 400, TEMPLATE),
    # The recipient cannot be reached, for good
    *[(code, 400, RECIPIENT) for code in (131026, 131050, 130472, 131021)],
    # The channel is broken: route elsewhere, fix credentials or payment
    *[(code, 403, CHANNEL) for code in (131042, 131031, 368, 131048, 10, 200, 250, 299)],
    *[(code, 401, CHANNEL) for code in (190, 0)],
    # The request itself is wrong
    *[
        (code, 400, BAD)
        for code in (
            132000,
            132001,
            132005,
            132007,
            132008,
            132012,
            132015,
            132016,
            131051,
            131053,
            131008,
            131009,
            100,
            131030,
            131005,
        )
    ],
]


@pytest.mark.parametrize(("code", "http_status", "expected"), META_CODES)
def test_meta_code_classes(code: int, http_status: int, expected: ErrorClass) -> None:
    assert classify_meta_error(code, http_status) is expected
    assert classify_meta_error(str(code), http_status) is expected


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        (999999, 400, RETRY),  # unknown: the caller bounds retries
        ("http_503", 503, RETRY),
        ("http_502", 502, RETRY),
        ("timeout", None, RETRY),
        ("connection_error", None, RETRY),
        ("http_401", 401, CHANNEL),
        (987654, 403, CHANNEL),
        (300, 400, RETRY),  # just past the 200-299 permission range
    ],
)
def test_meta_unknown_codes_fall_back_on_http_status(
    code: int | str, http_status: int | None, expected: ErrorClass
) -> None:
    assert classify_meta_error(code, http_status) is expected


def test_meta_graph_error_body_is_read() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                "type": "OAuthException",
                "code": 131056,
                "error_subcode": 2494055,
                "error_data": {"messaging_product": "whatsapp", "details": "Too many messages to the same recipient."},
                "fbtrace_id": "AbC123xyz",
            }
        }
    )
    error = meta_error_from_response(400, body)
    assert error.error_class is RETRY
    assert error.code == "131056"
    assert error.http_status == 400
    assert error.retry_after == 6.0
    assert "pair rate limit hit" in error.message
    assert "Too many messages to the same recipient." in error.message


def test_meta_retry_after_header_wins_over_the_code_hint() -> None:
    body = b'{"error":{"message":"(#130429) Rate limit hit","code":130429}}'
    assert meta_error_from_response(429, body).retry_after == 1.0
    assert meta_error_from_response(429, body, retry_after=12.0).retry_after == 12.0


@pytest.mark.parametrize(
    ("status", "body", "expected_class"),
    [
        (503, b"<html>Service Unavailable</html>", RETRY),
        (502, b"", RETRY),
        (401, b"not json", CHANNEL),
        (500, b'{"unexpected": true}', RETRY),
        (400, b'{"error": "a string, not an object"}', RETRY),
    ],
)
def test_meta_bodies_that_are_not_graph_errors(status: int, body: bytes, expected_class: ErrorClass) -> None:
    error = meta_error_from_response(status, body)
    assert error.code == f"http_{status}"
    assert error.error_class is expected_class
    assert error.http_status == status


TWILIO_CODES = [
    *[(code, 429, RETRY) for code in (20429,)],
    *[(code, 400, RETRY) for code in (63018, 30003, 30008, 63032)],
    (63016, 400, TEMPLATE),
    *[(code, 400, RECIPIENT) for code in (63024, 21211, 21614, 21610, 30005, 30006, 63014)],
    *[(code, 400, CHANNEL) for code in (63112, 30007, 21212, 63007)],
    (20003, 401, CHANNEL),
    *[(code, 400, BAD) for code in (63027, 63030, 63025, 63019, 63021, 21408, 63005, 63013, 21619, 21617, 21656)],
]


@pytest.mark.parametrize(("code", "http_status", "expected"), TWILIO_CODES)
def test_twilio_code_classes(code: int, http_status: int, expected: ErrorClass) -> None:
    assert classify_twilio_error(code, http_status) is expected
    assert classify_twilio_error(str(code), http_status) is expected


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        (99999, 400, RETRY),
        ("http_429", 429, RETRY),
        ("http_500", 500, RETRY),
        ("http_503", 503, RETRY),
        ("http_401", 401, CHANNEL),
        ("http_403", 403, CHANNEL),
        (12345, 403, CHANNEL),
        ("timeout", None, RETRY),
    ],
)
def test_twilio_unknown_codes_fall_back_on_http_status(
    code: int | str, http_status: int | None, expected: ErrorClass
) -> None:
    assert classify_twilio_error(code, http_status) is expected


def test_twilio_classic_error_body_is_read() -> None:
    body = orjson.dumps(
        {
            "code": 21211,
            "message": "Invalid 'To' Phone Number: whatsapp:+0000",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        }
    )
    error = twilio_error_from_response(400, body)
    assert (error.error_class, error.code, error.http_status) == (RECIPIENT, "21211", 400)
    assert error.message == "Invalid 'To' Phone Number: whatsapp:+0000"


def test_twilio_rfc9457_error_body_is_read() -> None:
    body = orjson.dumps(
        {
            "type": "https://www.twilio.com/docs/errors/63016",
            "title": "Outside the allowed window",
            "status": 400,
            "code": 63016,
            "detail": "Failed to send freeform message because you are outside the allowed window.",
        }
    )
    error = twilio_error_from_response(400, body)
    assert (error.error_class, error.code) == (TEMPLATE, "63016")
    assert "Outside the allowed window" in error.message
    assert "outside the allowed window." in error.message


def test_twilio_throttle_hint_and_retry_after_header() -> None:
    body = b'{"code": 20429, "message": "Too Many Requests", "status": 429}'
    assert twilio_error_from_response(429, body).retry_after == 1.0
    assert twilio_error_from_response(429, body, retry_after=3.0).retry_after == 3.0


@pytest.mark.parametrize(
    ("status", "body", "expected_class"),
    [(503, b"Service Unavailable", RETRY), (401, b"", CHANNEL), (500, b"[]", RETRY)],
)
def test_twilio_bodies_that_are_not_twilio_errors(status: int, body: bytes, expected_class: ErrorClass) -> None:
    error = twilio_error_from_response(status, body)
    assert (error.code, error.error_class) == (f"http_{status}", expected_class)
