"""What leadline refuses, and how: a clean JSON error a person can read, a counter per channel for
rejected signatures, and nothing stored. Also the /v1 API's refusals and its OpenAPI description."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from helpers import (
    AUTH,
    FORM,
    LUCIA,
    meta_fixture,
    meta_headers,
    meta_json,
    only_lead,
    post_meta,
    post_twilio,
    row_counts,
    scrape,
    timeline_of,
    twilio_fixture,
    twilio_headers,
)
from sqlalchemy import select

from conftest import (
    META_APP_SECRET,
    TWILIO_AUTH_TOKEN,
    RunningApp,
    base_config,
    running_app,
)
from leadline.config import config_from_mapping
from leadline.store.tables import webhook_rejections

NOTHING_STORED = {"leads": 0, "messages": 0, "timeline_events": 0, "jobs": 0, "provider_notices": 0}


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text


def meta_request(body: bytes, headers: dict[str, str]) -> Callable[[str], httpx.Request]:
    return lambda base: httpx.Request("POST", f"{base}/webhooks/meta", content=body, headers=headers)


def twilio_request(body: str | bytes, headers: dict[str, str]) -> Callable[[str], httpx.Request]:
    return lambda base: httpx.Request("POST", f"{base}/webhooks/twilio", content=body, headers=headers)


TEXT = meta_fixture("text")
TWILIO_TEXT = twilio_fixture("inbound_text")
UNKNOWN_NUMBER_ID = meta_json(
    {
        **json.loads(TEXT),
        "entry": [
            {
                "id": "310000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            **json.loads(TEXT)["entry"][0]["changes"][0]["value"],
                            "metadata": {"display_phone_number": "15550007777", "phone_number_id": "429999999999999"},
                        },
                    }
                ],
            }
        ],
    }
)
TWILIO_UNKNOWN_TO = {**TWILIO_TEXT, "To": "whatsapp:+15550007777"}
MALFORMED_JSON = b'{"object": "whatsapp_business_account", "entry": [ {'

REFUSALS: list[Any] = [
    pytest.param(
        meta_request(TEXT, {"Content-Type": "application/json"}), 401, "missing_signature", id="meta-no-signature"
    ),
    pytest.param(
        meta_request(TEXT, meta_headers(TEXT, secret="not-the-app-secret")), 403, "bad_signature", id="meta-wrong-sig"
    ),
    pytest.param(
        meta_request(TEXT + b" ", meta_headers(TEXT)), 403, "bad_signature", id="meta-signature-of-another-body"
    ),
    pytest.param(meta_request(MALFORMED_JSON, meta_headers(MALFORMED_JSON)), 400, "malformed_body", id="meta-bad-json"),
    pytest.param(meta_request(b"[1, 2]", meta_headers(b"[1, 2]")), 400, "malformed_body", id="meta-json-not-object"),
    pytest.param(
        meta_request(UNKNOWN_NUMBER_ID, meta_headers(UNKNOWN_NUMBER_ID)),
        404,
        "unknown_channel",
        id="meta-unknown-number",
    ),
    pytest.param(
        twilio_request(urlencode(TWILIO_TEXT), {"Content-Type": FORM}), 401, "missing_signature", id="twilio-no-sig"
    ),
    pytest.param(
        twilio_request(
            urlencode(TWILIO_TEXT), {"Content-Type": FORM, "X-Twilio-Signature": "bm90IHRoZSBzaWduYXR1cmU="}
        ),
        403,
        "bad_signature",
        id="twilio-wrong-sig",
    ),
    pytest.param(
        twilio_request(urlencode({**TWILIO_TEXT, "Body": "changed"}), twilio_headers(TWILIO_TEXT)),
        403,
        "bad_signature",
        id="twilio-signature-of-another-form",
    ),
    pytest.param(
        twilio_request("a=1&&=&%zz", twilio_headers({"a": "1"})), 400, "malformed_body", id="twilio-malformed-form"
    ),
    pytest.param(
        twilio_request(b"Body=\xff\xfe", twilio_headers({})), 400, "malformed_body", id="twilio-form-not-utf8"
    ),
    pytest.param(
        twilio_request(json.dumps(TWILIO_TEXT), {**twilio_headers(TWILIO_TEXT), "Content-Type": "application/json"}),
        400,
        "malformed_body",
        id="twilio-json-instead-of-form",
    ),
    pytest.param(
        twilio_request(urlencode(TWILIO_UNKNOWN_TO), twilio_headers(TWILIO_UNKNOWN_TO)),
        404,
        "unknown_channel",
        id="twilio-unknown-to",
    ),
]


@pytest.mark.parametrize(("build", "status", "code"), REFUSALS)
async def test_refused_webhook_gets_a_json_error_and_stores_nothing(
    app: RunningApp, build: Callable[[str], httpx.Request], status: int, code: str
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.send(build(app.url))
    assert_json_error(response, status, code)
    assert await row_counts(app.services.db) == NOTHING_STORED


@pytest.fixture
async def small_app(database_url: str) -> AsyncIterator[RunningApp]:
    async with running_app(config_from_mapping(base_config(database_url, max_body_bytes=2048))) as running:
        yield running


def oversized_meta() -> bytes:
    payload = json.loads(TEXT)
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "x" * 4000
    return meta_json(payload)


async def test_meta_body_over_the_limit_is_refused_with_413(small_app: RunningApp) -> None:
    body = oversized_meta()
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{small_app.url}/webhooks/meta", content=body, headers=meta_headers(body))
    assert_json_error(response, 413, "body_too_large")
    assert await row_counts(small_app.services.db) == NOTHING_STORED


async def test_body_over_the_limit_without_a_content_length_is_refused_with_413(small_app: RunningApp) -> None:
    body = oversized_meta()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    async with httpx.AsyncClient() as client:
        response = await client.post(f"{small_app.url}/webhooks/meta", content=chunks(), headers=meta_headers(body))
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413, "body_too_large")
    assert await row_counts(small_app.services.db) == NOTHING_STORED


async def test_twilio_body_over_the_limit_is_refused_with_413(small_app: RunningApp) -> None:
    params = {**TWILIO_TEXT, "Body": "x" * 4000}
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, small_app.url, params)
    assert_json_error(response, 413, "body_too_large")
    assert await row_counts(small_app.services.db) == NOTHING_STORED


async def test_body_under_the_limit_is_accepted_by_the_small_app(small_app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        assert (await post_meta(client, small_app.url, TEXT)).status_code == 200


async def test_webhook_for_an_unknown_provider_is_404(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{app.url}/webhooks/telegram", content=b"{}")
    assert_json_error(response, 404, "unknown_provider")


# --------------------------------------------------------------------------------------------
# Unknown fields


async def test_meta_webhook_with_unknown_extra_fields_is_accepted(app: RunningApp) -> None:
    payload = json.loads(TEXT)
    payload["brand_new_top_level"] = {"x": 1}
    entry = payload["entry"][0]
    entry["unknown_entry_field"] = [1, 2, 3]
    value = entry["changes"][0]["value"]
    value["new_value_field"] = "hello"
    value["contacts"][0]["identity_key_hash"] = "abc123"
    value["messages"][0]["future_field"] = {"nested": True}
    value["messages"][0]["text"]["extra"] = "ignored"
    body = meta_json(payload)
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, app.url, body)
        assert response.status_code == 200
        lead = await only_lead(client, app.url, LUCIA)
    assert lead["display_name"] == "Lucía Ramos"
    assert (await row_counts(app.services.db))["messages"] == 1


async def test_twilio_webhook_with_unknown_extra_parameters_is_accepted(app: RunningApp) -> None:
    params = {**TWILIO_TEXT, "SomethingNew": "1", "ChannelMetadata": '{"type":"whatsapp"}'}
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, app.url, params)
        assert response.status_code == 200
        await only_lead(client, app.url, LUCIA)


# --------------------------------------------------------------------------------------------
# Rejected signatures are counted per channel, with no secret in the record


async def test_rejected_meta_signature_is_counted_for_its_channel(app: RunningApp) -> None:
    labels = {"provider": "meta", "channel": "meta-main", "code": "bad_signature"}
    async with httpx.AsyncClient() as client:
        before = await scrape(client, app.url, "leadline_webhook_rejections_total", **labels)
        for _ in range(2):
            response = await client.post(
                f"{app.url}/webhooks/meta", content=TEXT, headers=meta_headers(TEXT, secret="wrong-secret")
            )
            assert response.status_code == 403
        after = await scrape(client, app.url, "leadline_webhook_rejections_total", **labels)
    assert after - before == 2
    async with app.services.db.read() as conn:
        rows = list(await conn.execute(select(webhook_rejections)))
    assert [(r.provider, r.channel, r.code) for r in rows] == [("meta", "meta-main", "bad_signature")] * 2
    for row in rows:
        assert META_APP_SECRET not in row.reason


async def test_rejected_twilio_signature_is_counted_for_its_channel(app: RunningApp) -> None:
    labels = {"provider": "twilio", "channel": "twilio-main", "code": "bad_signature"}
    headers = {"Content-Type": FORM, "X-Twilio-Signature": "bm90IHRoZSBzaWduYXR1cmU="}
    async with httpx.AsyncClient() as client:
        before = await scrape(client, app.url, "leadline_webhook_rejections_total", **labels)
        response = await client.post(f"{app.url}/webhooks/twilio", content=urlencode(TWILIO_TEXT), headers=headers)
        assert response.status_code == 403
        after = await scrape(client, app.url, "leadline_webhook_rejections_total", **labels)
    assert after - before == 1
    async with app.services.db.read() as conn:
        [row] = list(await conn.execute(select(webhook_rejections)))
    assert (row.provider, row.channel, row.code) == ("twilio", "twilio-main", "bad_signature")
    assert TWILIO_AUTH_TOKEN not in row.reason


# --------------------------------------------------------------------------------------------
# /v1


async def test_api_without_a_key_is_401(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/v1/leads")
    assert_json_error(response, 401, "unauthorized")


@pytest.mark.parametrize(
    "header", ["Bearer wrong-key-0123456789", "Basic dGVzdHM6dGVzdHM=", "Bearer", "test-api-key-0123456789abcdef"]
)
async def test_api_with_a_wrong_key_is_401(app: RunningApp, header: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/v1/leads", headers={"Authorization": header})
    assert_json_error(response, 401, "unauthorized")


async def test_api_with_a_bad_cursor_is_400(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, TEXT)
        lead = await only_lead(client, app.url, LUCIA)
        for cursor in ("not-a-cursor", "WzEsMl0", "bnVsbA", "W10", '["x", 1]'):
            response = await client.get(
                f"{app.url}/v1/leads/{lead['id']}/timeline", params={"cursor": cursor}, headers=AUTH
            )
            assert_json_error(response, 400, "invalid_cursor")


async def test_timeline_pages_with_the_cursor_it_gave(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        await post_meta(client, app.url, meta_fixture("forwarded"))
        await post_meta(client, app.url, meta_fixture("reaction"))
        lead = await only_lead(client, app.url, LUCIA)
        url = f"{app.url}/v1/leads/{lead['id']}/timeline"
        first = (await client.get(url, params={"limit": 3}, headers=AUTH)).json()
        second = (await client.get(url, params={"limit": 3, "cursor": first["next_cursor"]}, headers=AUTH)).json()
    assert len(first["events"]) == 3 and len(second["events"]) == 1
    assert second["next_cursor"] is None
    ids = [e["id"] for e in first["events"] + second["events"]]
    assert len(set(ids)) == 4


async def test_api_unknown_lead_and_message_are_404(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        lead = await client.get(f"{app.url}/v1/leads/lead_nope", headers=AUTH)
        timeline = await client.get(f"{app.url}/v1/leads/lead_nope/timeline", headers=AUTH)
        msg = await client.get(f"{app.url}/v1/messages/msg_nope", headers=AUTH)
    assert_json_error(lead, 404, "lead_not_found")
    assert_json_error(timeline, 404, "lead_not_found")
    assert_json_error(msg, 404, "message_not_found")


@pytest.mark.parametrize("phone", ["hello", "12", "+0001234567", "+999123456789"])
async def test_api_lead_search_with_an_invalid_phone_is_400(app: RunningApp, phone: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/v1/leads", params={"phone": phone}, headers=AUTH)
    assert_json_error(response, 400, "invalid_phone")


async def test_api_with_an_out_of_range_limit_is_a_json_error(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/v1/leads", params={"limit": 0}, headers=AUTH)
    assert_json_error(response, 422, "invalid_request")


async def test_openapi_lists_the_v1_paths(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {
        "/v1/leads",
        "/v1/leads/{lead_id}",
        "/v1/leads/{lead_id}/timeline",
        "/v1/messages/{message_id}",
    } <= set(paths)
    assert "/webhooks/{provider}" in paths


# --------------------------------------------------------------------------------------------
# Values longer than leadline stores (PostgreSQL enforces column lengths; SQLite does not)


def _mutated_meta(fixture: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    payload = json.loads(meta_fixture(fixture))
    change(payload)
    return meta_json(payload)


def _long_message_id(payload: dict[str, Any]) -> None:
    payload["entry"][0]["changes"][0]["value"]["messages"][1]["id"] = "wamid." + "x" * 200


def _long_user_id(payload: dict[str, Any]) -> None:
    value = payload["entry"][0]["changes"][0]["value"]
    value["contacts"][1]["wa_id"] = "US." + "1" * 200


def _long_status_error_code(payload: dict[str, Any]) -> None:
    value = payload["entry"][0]["changes"][1]["value"]
    value["statuses"][0]["errors"] = [{"code": "E" * 40, "title": "?"}]


def _long_notice_field(payload: dict[str, Any]) -> None:
    payload["entry"][0]["changes"].append({"field": "f" * 100, "value": {"event": "X"}})
    payload["entry"][0]["changes"].append({"field": "account_update", "value": {"event": "Y"}})


@pytest.mark.parametrize(
    "change", [_long_message_id, _long_user_id, _long_status_error_code, _long_notice_field], ids=lambda f: f.__name__
)
async def test_overlong_value_in_a_meta_batch_does_not_stop_the_others(
    app: RunningApp, change: Callable[[dict[str, Any]], None]
) -> None:
    """Such a value is no real Meta id; once it failed the whole batch's write on PostgreSQL (a 500)."""
    body = _mutated_meta("batched", change)
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, app.url, body)
        assert response.status_code == 200, response.text
        lucia = await only_lead(client, app.url, LUCIA)
    assert lucia["display_name"] == "Lucía Ramos"
    assert (await row_counts(app.services.db))["messages"] >= 1


@pytest.mark.parametrize(
    ("param", "value", "status"),
    [("MessageSid", "SM" + "0" * 200, 400), ("WaId", "u" * 100, 200), ("ErrorCode", "9" * 40, 200)],
)
async def test_overlong_twilio_value_is_refused_cleanly(app: RunningApp, param: str, value: str, status: int) -> None:
    fixture = "status_failed" if param == "ErrorCode" else "inbound_text"
    params = {**twilio_fixture(fixture), param: value}
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, app.url, params)
    assert response.status_code == status, response.text
    assert (await row_counts(app.services.db))["messages"] == 0


async def test_meta_text_with_a_nul_character_is_kept_without_it(app: RunningApp) -> None:
    """PostgreSQL text cannot hold NUL; it once failed the write (a 500) of the whole batch."""
    body = TEXT.replace(b"Hola, ", b"Hola\\u0000, ")
    assert b"\\u0000" in body
    async with httpx.AsyncClient() as client:
        response = await post_meta(client, app.url, body)
        assert response.status_code == 200, response.text
        lead = await only_lead(client, app.url, LUCIA)
        [entry] = await timeline_of(client, app.url, lead["id"])
    assert entry["summary"] == "Hola, ¿tienen envío gratis?"


async def test_twilio_body_with_a_nul_character_is_kept_without_it(app: RunningApp) -> None:
    params = {**TWILIO_TEXT, "Body": "Hola\x00 de nuevo", "ProfileName": "Lu\x00cía"}
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, app.url, params)
        assert response.status_code == 200, response.text
        lead = await only_lead(client, app.url, LUCIA)
        [entry] = await timeline_of(client, app.url, lead["id"])
    assert (entry["summary"], lead["display_name"]) == ("Hola de nuevo", "Lucía")
