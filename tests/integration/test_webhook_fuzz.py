"""Property tests through the real app: no body, however malformed, gets a 5xx from either webhook.

A provider retries anything that is not a 2xx for days, so a body that crashes leadline is retried
for days too. Every answer must be a clean 4xx JSON error, or 200 for a verified payload (whose
untranslatable items are skipped). Runs on SQLite and PostgreSQL, whose column limits differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from helpers import FIXTURES, FORM, meta_headers, twilio_headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TWILIO_ACCOUNT_SID, base_config
from leadline.api.app import create_app
from leadline.config import config_from_mapping

# LEADLINE_FUZZ_EXAMPLES=2000 for a deeper, randomised hunt; the default is a quick, repeatable run.
DEEP = os.environ.get("LEADLINE_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(DEEP or 40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=DEEP is None,
    database=None,
)

META_FIXTURES = [json.loads(path.read_bytes()) for path in sorted((FIXTURES / "meta").glob("*.json"))]
TWILIO_FIXTURES = [json.loads(path.read_bytes()) for path in sorted((FIXTURES / "twilio").glob("*.json"))]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=300)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=15,
)
# Strings a real payload could almost hold: ids, numbers, huge digits, long junk.
near_miss_text = st.one_of(
    st.text(max_size=20),
    st.text(min_size=100, max_size=400),
    st.from_regex(r"[0-9]{1,40}", fullmatch=True),
    st.from_regex(r"\+?[0-9]{6,18}", fullmatch=True),
    st.sampled_from(["", " ", "0", "-1", "NaN", "whatsapp:+", "whatsapp:+5215512345678", "1e308", "\x00"]),
)


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    app = create_app(config_from_mapping(base_config(database_url)))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def assert_clean(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert "Traceback" not in response.text
    else:
        assert response.status_code == 200


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(paths_of(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.extend(paths_of(item, (*prefix, index)))
    return paths


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = replaced(value[head], tuple(rest), new)
    return copy


# --------------------------------------------------------------------------------------------
# Meta


@FUZZ
@given(body=st.binary(max_size=3000), signed=st.booleans())
def test_random_bytes_to_the_meta_webhook_never_get_a_5xx(client: TestClient, body: bytes, signed: bool) -> None:
    headers = meta_headers(body) if signed else {"Content-Type": "application/json"}
    assert_clean(client.post("/webhooks/meta", content=body, headers=headers))


@FUZZ
@given(payload=json_values, signed=st.booleans())
def test_random_json_to_the_meta_webhook_never_gets_a_5xx(client: TestClient, payload: Any, signed: bool) -> None:
    body = json.dumps(payload).encode()
    headers = meta_headers(body) if signed else meta_headers(body, secret="wrong")
    assert_clean(client.post("/webhooks/meta", content=body, headers=headers))


@FUZZ
@given(data=st.data())
def test_signed_meta_payload_with_any_part_replaced_never_gets_a_5xx(client: TestClient, data: st.DataObject) -> None:
    payload = data.draw(st.sampled_from(META_FIXTURES))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths_of(payload)))
        payload = replaced(payload, path, data.draw(near_miss_text | json_values))
    body = json.dumps(payload, ensure_ascii=data.draw(st.booleans())).encode()
    assert_clean(client.post("/webhooks/meta", content=body, headers=meta_headers(body)))


# --------------------------------------------------------------------------------------------
# Twilio

form_keys = st.sampled_from(
    [
        "MessageSid",
        "AccountSid",
        "From",
        "To",
        "Body",
        "WaId",
        "ProfileName",
        "MessageType",
        "NumMedia",
        "MediaUrl0",
        "MediaContentType0",
        "Latitude",
        "Longitude",
        "ButtonPayload",
        "ButtonText",
        "MessageStatus",
        "SmsStatus",
        "ErrorCode",
        "ErrorMessage",
        "OriginalRepliedMessageSid",
        "ReferralCtwaClid",
        "Forwarded",
    ]
) | st.text(min_size=1, max_size=20)


@FUZZ
@given(body=st.binary(max_size=3000), signed=st.booleans(), content_type=st.sampled_from([FORM, None, "text/plain"]))
def test_random_bytes_to_the_twilio_webhook_never_get_a_5xx(
    client: TestClient, body: bytes, signed: bool, content_type: str | None
) -> None:
    headers = twilio_headers({}) if signed else {}
    if content_type is None:
        headers.pop("Content-Type", None)
    else:
        headers["Content-Type"] = content_type
    assert_clean(client.post("/webhooks/twilio", content=body, headers=headers))


@FUZZ
@given(
    params=st.dictionaries(form_keys, near_miss_text, max_size=12),
    routable=st.booleans(),
    signed=st.booleans(),
)
def test_random_form_to_the_twilio_webhook_never_gets_a_5xx(
    client: TestClient, params: dict[str, str], routable: bool, signed: bool
) -> None:
    if routable:  # reach the signature check and beyond
        params = {"AccountSid": TWILIO_ACCOUNT_SID, "To": "whatsapp:+15550001234", **params}
    headers = twilio_headers(params) if signed else {"Content-Type": FORM, "X-Twilio-Signature": "AAAA"}
    assert_clean(client.post("/webhooks/twilio", content=urlencode(params), headers=headers))


@FUZZ
@given(data=st.data())
def test_signed_twilio_form_with_any_value_changed_never_gets_a_5xx(client: TestClient, data: st.DataObject) -> None:
    params: dict[str, str] = dict(data.draw(st.sampled_from(TWILIO_FIXTURES)))
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(sorted(params)) | form_keys)
        if data.draw(st.booleans()) and key in params and key not in ("AccountSid", "To", "From"):
            del params[key]
        else:
            params[key] = data.draw(near_miss_text)
    response = client.post("/webhooks/twilio", content=urlencode(params), headers=twilio_headers(params))
    assert_clean(response)
