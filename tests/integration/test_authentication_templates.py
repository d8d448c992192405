"""An AUTHENTICATION template end to end, on SQLite and PostgreSQL: defined once, submitted to both
sandbox providers, approved, and sent through ``POST /v1/messages`` on each, checking the exact
requests the fake providers received."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from outbound_world import CUSTOMER_DIGITS, World, open_world, sent_form, sent_json

from conftest import API_KEY
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.sync import define_templates, submit_templates, sync_channel

LOGIN_CODE: dict[str, Any] = {
    "name": "login_code",
    "language": "en_US",
    "category": "AUTHENTICATION",
    "security_recommendation": True,
    "code_expiration_minutes": 10,
    "buttons": [{"type": "otp", "text": "Copy code"}],
}
TIMELINE_TEXT = (
    "123456 is your verification code. For your security, do not share this code.\nThis code expires in 10 minutes."
)


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with open_world(database_url) as opened:
        yield opened


async def template_calls(world: World, provider: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = (await world.control("GET", f"/requests?provider={provider}"))["requests"]
    return [
        r for r in requests if r["method"] == "POST" and ("message_templates" in r["path"] or "Content" in r["path"])
    ]


async def approve_login_code(world: World) -> None:
    await world.control("POST", "/templates/settings", {"delay": None})
    definition = TemplateDefinition.model_validate(LOGIN_CODE)
    await define_templates(world.services.db, [SourcedDefinition(definition, "test")])
    for name in ("meta-main", "twilio-main"):
        [outcome] = await submit_templates(world.services.db, world.config.channel(name))
        assert outcome.error is None and outcome.created, outcome
    decided = await world.control("POST", "/templates/decide", {})
    assert {(d["provider"], d["status"]) for d in decided["decided"]} == {("meta", "APPROVED"), ("twilio", "approved")}
    for name in ("meta-main", "twilio-main"):
        await sync_channel(world.services.db, world.config.channel(name))


async def test_authentication_template_is_submitted_to_both_providers_in_their_formats(world: World) -> None:
    await approve_login_code(world)

    [meta_create] = await template_calls(world, "meta")
    assert sent_json(meta_create) == {
        "name": "login_code",
        "language": "en_US",
        "category": "AUTHENTICATION",
        "components": [
            {"type": "BODY", "add_security_recommendation": True},
            {"type": "FOOTER", "code_expiration_minutes": 10},
            {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]},
        ],
    }
    content_create, approval_request = await template_calls(world, "twilio")
    assert content_create["path"].endswith("/v1/Content")
    assert sent_json(content_create) == {
        "friendly_name": "login_code",
        "language": "en_US",
        "types": {
            "whatsapp/authentication": {
                "add_security_recommendation": True,
                "code_expiration_minutes": 10,
                "actions": [{"type": "COPY_CODE", "copy_code_text": "Copy code"}],
            }
        },
    }
    assert approval_request["path"].endswith("/ApprovalRequests/whatsapp")
    assert sent_json(approval_request) == {"name": "login_code", "category": "AUTHENTICATION"}


@pytest.mark.parametrize("variables", [{"code": "123456"}, ["123456"]])
async def test_meta_sends_the_code_as_body_and_button_parameter(world: World, variables: Any) -> None:
    await approve_login_code(world)
    message_id = await world.send(
        channel="meta-main", template={"name": "login_code", "language": "en_US", "variables": variables}
    )

    await world.drain()

    [sent] = await world.provider_requests("meta")
    assert sent_json(sent) == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": "template",
        "template": {
            "name": "login_code",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "123456"}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "123456"}]},
            ],
        },
    }
    message = await world.message(message_id)
    assert (message["kind"], message["status"], message["text"]) == ("template", "accepted", TIMELINE_TEXT)


async def test_twilio_sends_the_content_sid_with_the_code_as_variable_1(world: World) -> None:
    await approve_login_code(world)
    content_sid = next(t["id"] for t in (await world.control("GET", "/templates?provider=twilio"))["templates"])
    message_id = await world.send(
        channel="twilio-main", template={"name": "login_code", "language": "en_US", "variables": {"code": "123456"}}
    )

    await world.drain()

    [sent] = await world.provider_requests("twilio")
    form = dict(sent_form(sent))
    assert form["ContentSid"] == content_sid
    assert json.loads(form["ContentVariables"]) == {"1": "123456"}
    assert "Body" not in form
    message = await world.message(message_id)
    assert (message["kind"], message["text"]) == ("template", TIMELINE_TEXT)


async def test_a_custom_body_and_a_long_expiration_are_refused_over_the_api(world: World) -> None:
    async with world.http.post(
        f"{world.url}/v1/templates/validate",
        json={**LOGIN_CODE, "body": "Your code is {{1}}.", "code_expiration_minutes": 120},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        validated = await response.json()
    assert validated["valid"] is False
    assert {p["field"] for p in validated["problems"]} == {"body", "code_expiration_minutes"}
