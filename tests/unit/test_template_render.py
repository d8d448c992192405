"""A template rendered for each provider: the exact Graph and Content API bodies, and the send parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from leadline.providers.meta.client import template_object
from leadline.providers.meta.templates import meta_template_request, parse_template_status_update
from leadline.providers.twilio.client import content_variables
from leadline.providers.twilio.templates import twilio_content_request
from leadline.templates.definitions import TemplateDefinition
from leadline.templates.errors import InvalidTemplateVariables
from leadline.templates.render import bind_variables, render_send, render_text

POSITIONAL = TemplateDefinition.model_validate(
    {
        "name": "order_update",
        "language": "es_MX",
        "category": "UTILITY",
        "header": {"type": "text", "text": "Pedido {{1}}", "example": "8812"},
        "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
        "footer": "Tienda Ejemplo",
        "buttons": [
            {"type": "quick_reply", "text": "Cambiar cita", "payload": "reschedule"},
            {"type": "url", "text": "Rastrear", "url": "https://shop.example/t/{{1}}", "example": "8812"},
        ],
    }
)
NAMED = TemplateDefinition.model_validate(
    {
        "name": "appointment",
        "language": "en_US",
        "category": "UTILITY",
        "body": {"text": "Hi {{first_name}}, see you at {{time}}.", "examples": {"first_name": "Ana", "time": "10:30"}},
        "buttons": [{"type": "phone_number", "text": "Call us", "phone_number": "+15550001234"}],
    }
)
MEDIA = TemplateDefinition.model_validate(
    {
        "name": "invoice",
        "language": "es",
        "category": "UTILITY",
        "header": {"type": "document", "url": "https://files.example/f.pdf", "meta_handle": "4::aGFuZGxl"},
        "body": {"text": "Tu factura {{1}} está lista.", "examples": ["F-1"]},
    }
)


def test_meta_create_request_positional() -> None:
    assert meta_template_request(POSITIONAL) == {
        "name": "order_update",
        "language": "es_MX",
        "category": "UTILITY",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Pedido {{1}}", "example": {"header_text": ["8812"]}},
            {
                "type": "BODY",
                "text": "Hola {{1}}, tu pedido {{2}} va en camino.",
                "example": {"body_text": [["Lucía", "8812"]]},
            },
            {"type": "FOOTER", "text": "Tienda Ejemplo"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Cambiar cita"},
                    {
                        "type": "URL",
                        "text": "Rastrear",
                        "url": "https://shop.example/t/{{1}}",
                        "example": ["https://shop.example/t/8812"],
                    },
                ],
            },
        ],
    }


def test_meta_create_request_named_and_media() -> None:
    assert meta_template_request(NAMED) == {
        "name": "appointment",
        "language": "en_US",
        "category": "UTILITY",
        "parameter_format": "NAMED",
        "components": [
            {
                "type": "BODY",
                "text": "Hi {{first_name}}, see you at {{time}}.",
                "example": {
                    "body_text_named_params": [
                        {"param_name": "first_name", "example": "Ana"},
                        {"param_name": "time", "example": "10:30"},
                    ]
                },
            },
            {
                "type": "BUTTONS",
                "buttons": [{"type": "PHONE_NUMBER", "text": "Call us", "phone_number": "+15550001234"}],
            },
        ],
    }
    assert meta_template_request(MEDIA)["components"][0] == {
        "type": "HEADER",
        "format": "DOCUMENT",
        "example": {"header_handle": ["4::aGFuZGxl"]},
    }


def test_meta_send_positional_by_name_and_by_position_agree() -> None:
    by_name = bind_variables(POSITIONAL, {"1": "Ana", "2": "77", "header": "77", "button.1": "77/a"})
    by_position = bind_variables(POSITIONAL, ["Ana", "77", "77", "77/a"])
    assert by_name == by_position
    send = render_send("meta", POSITIONAL, by_name, provider_template_id="594425479261596")
    assert template_object(send) == {
        "name": "order_update",
        "language": {"code": "es_MX"},
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "77"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "77"}]},
            {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "77/a"}]},
        ],
    }
    assert render_text(POSITIONAL, by_name) == "Pedido 77\nHola Ana, tu pedido 77 va en camino.\nTienda Ejemplo"


def test_meta_send_named() -> None:
    values = bind_variables(NAMED, {"time": "9:00", "first_name": "Lucía"})
    assert template_object(render_send("meta", NAMED, values, provider_template_id="1")) == {
        "name": "appointment",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Lucía", "parameter_name": "first_name"},
                    {"type": "text", "text": "9:00", "parameter_name": "time"},
                ],
            }
        ],
    }
    assert render_text(NAMED, values) == "Hi Lucía, see you at 9:00."


def test_meta_send_media_header_defaults_to_the_definition_url() -> None:
    values = bind_variables(MEDIA, ["F-9"])
    assert template_object(render_send("meta", MEDIA, values, provider_template_id="1"))["components"][0] == {
        "type": "header",
        "parameters": [{"type": "document", "document": {"link": "https://files.example/f.pdf"}}],
    }


def test_twilio_content_request_numbers_variables_across_the_content() -> None:
    assert twilio_content_request(POSITIONAL) == {
        "friendly_name": "order_update",
        "language": "es_MX",
        "variables": {"1": "Lucía", "2": "8812", "3": "8812", "4": "8812"},
        "types": {
            "whatsapp/card": {
                "body": "Hola {{1}}, tu pedido {{2}} va en camino.",
                "header_text": "Pedido {{3}}",
                "footer": "Tienda Ejemplo",
                "actions": [
                    {"type": "QUICK_REPLY", "title": "Cambiar cita", "id": "reschedule"},
                    {"type": "URL", "title": "Rastrear", "url": "https://shop.example/t/{{4}}"},
                ],
            }
        },
    }
    assert twilio_content_request(NAMED) == {
        "friendly_name": "appointment",
        "language": "en_US",
        "variables": {"1": "Ana", "2": "10:30"},
        "types": {
            "twilio/call-to-action": {
                "body": "Hi {{1}}, see you at {{2}}.",
                "actions": [{"type": "PHONE_NUMBER", "title": "Call us", "phone": "+15550001234"}],
            }
        },
    }
    assert twilio_content_request(MEDIA)["types"] == {
        "twilio/media": {"body": "Tu factura {{1}} está lista.", "media": ["https://files.example/f.pdf"]}
    }


@pytest.mark.parametrize(
    ("definition", "variables", "expected"),
    [
        (POSITIONAL, ["Ana", "77", "H-1", "77/a"], {"1": "Ana", "2": "77", "3": "H-1", "4": "77/a"}),
        (NAMED, {"first_name": "Lucía", "time": "9:00"}, {"1": "Lucía", "2": "9:00"}),
        (MEDIA, {"1": "F-9"}, {"1": "F-9"}),
    ],
)
def test_twilio_content_variables(definition: TemplateDefinition, variables: Any, expected: dict[str, str]) -> None:
    values = bind_variables(definition, variables)
    send = render_send("twilio", definition, values, provider_template_id="HX" + "0" * 32)
    assert send.provider_template_id == "HX" + "0" * 32
    assert orjson.loads(content_variables(send) or "") == expected


@pytest.mark.parametrize(
    ("variables", "fields"),
    [
        ({"1": "Ana"}, {"variables.2", "variables.header", "variables.button.1"}),
        ({"1": "Ana", "2": "", "header": "x", "button.1": "y"}, {"variables.2"}),
        ({"1": "a\tb", "2": "b", "header": "x", "button.1": "y"}, {"variables.1"}),
        ({"1": "a     b", "2": "b", "header": "x", "button.1": "y"}, {"variables.1"}),
        ({"1": "a", "2": "b", "header": "x", "button.1": "y", "3": "z"}, {"variables.3"}),
        (["a", "b"], {"variables"}),
        ("ab", {"variables"}),
    ],
)
def test_bad_variables_are_refused_with_each_problem(variables: Any, fields: set[str]) -> None:
    with pytest.raises(InvalidTemplateVariables) as refused:
        bind_variables(POSITIONAL, variables)
    assert refused.value.code == "invalid_template_variables"
    assert {p.field for p in refused.value.problems} == fields


def test_meta_status_update_fixture_is_read() -> None:
    fixture = Path(__file__).parents[1] / "fixtures" / "meta" / "template_status_update.json"
    value = orjson.loads(fixture.read_bytes())["entry"][0]["changes"][0]["value"]
    report = parse_template_status_update(value)
    assert report is not None
    assert (report.status, report.provider_template_id, report.name, report.language, report.category) == (
        "REJECTED",
        "594425479261596",
        "order_update",
        "es_MX",
        "UTILITY",
    )
    assert report.rejection_reason == "Two parameters are adjacent with no text between them."
