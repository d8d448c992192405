"""Each of WhatsApp's template rules, one case per rule: the field named and the reason given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from leadline.templates.definitions import TemplateDefinition, load_templates
from leadline.templates.validation import validate_template

VALID: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "header": {"type": "text", "text": "Pedido {{1}}", "example": "8812"},
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": {"1": "Lucía", "2": "8812"}},
    "footer": "Tienda Ejemplo",
    "buttons": [
        {"type": "quick_reply", "text": "Cambiar cita"},
        {"type": "quick_reply", "text": "Cancelar"},
        {"type": "url", "text": "Rastrear", "url": "https://shop.example/t/{{1}}", "example": "8812"},
        {"type": "phone_number", "text": "Llamar", "phone_number": "+15550001234"},
    ],
}

QR = {"type": "quick_reply", "text": "Sí"}
URL = {"type": "url", "text": "Ver", "url": "https://shop.example/"}


def problems_of(**changes: Any) -> list[tuple[str, str]]:
    definition = TemplateDefinition.model_validate({**VALID, **changes})
    return [(p.field, p.message) for p in validate_template(definition)]


def test_the_reference_template_is_valid() -> None:
    assert problems_of() == []


def test_named_variables_are_valid() -> None:
    body = {
        "text": "Hola {{first_name}}, tu pedido {{order}} sale hoy.",
        "examples": {"first_name": "Ana", "order": "1"},
    }
    assert problems_of(body=body) == []


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("name with capitals", {"name": "Order_Update"}, "name", "lowercase letters, digits and underscores"),
    ("name with a dash", {"name": "order-update"}, "name", "lowercase letters, digits and underscores"),
    ("name too long", {"name": "a" * 513}, "name", "at most 512"),
    ("unknown language code", {"language": "spanish"}, "language", "not a WhatsApp language code"),
    (
        "security recommendation outside authentication",
        {"security_recommendation": True},
        "security_recommendation",
        "AUTHENTICATION templates only",
    ),
    (
        "code expiration outside authentication",
        {"code_expiration_minutes": 5},
        "code_expiration_minutes",
        "AUTHENTICATION templates only",
    ),
    (
        "otp button outside authentication",
        {"buttons": [{"type": "otp"}]},
        "buttons[0].type",
        "AUTHENTICATION templates only",
    ),
    ("empty body", {"body": {"text": "  "}}, "body.text", "is empty"),
    ("body too long", {"body": {"text": "x" * 1025}}, "body.text", "at most 1024"),
    (
        "numbering gap",
        {"body": {"text": "Hola {{1}}, pedido {{3}} listo.", "examples": {"1": "a", "3": "c"}}},
        "body.text",
        "missing {{2}}",
    ),
    (
        "numbering not from 1",
        {"body": {"text": "Hola {{2}} listo.", "examples": {"2": "a"}}},
        "body.text",
        "missing {{1}}",
    ),
    (
        "variable opens the body",
        {"body": {"text": "{{1}}, tu pedido va.", "examples": ["a"]}},
        "body.text",
        "may not start with a variable",
    ),
    (
        "variable closes the body",
        {"body": {"text": "Tu pedido es {{1}}", "examples": ["a"]}},
        "body.text",
        "may not end with a variable",
    ),
    (
        "adjacent variables",
        {"body": {"text": "Hola {{1}} {{2}} listo.", "examples": ["a", "b"]}},
        "body.text",
        "next to each other",
    ),
    (
        "mixed kinds",
        {"body": {"text": "Hola {{1}} y {{name}} ya.", "examples": {"1": "a", "name": "b"}}},
        "body.text",
        "mixes numbered",
    ),
    (
        "named variable in capitals",
        {"body": {"text": "Hola {{FirstName}} ya.", "examples": {"FirstName": "a"}}},
        "body.text",
        "lowercase letters and underscores",
    ),
    ("missing body example", {"body": {"text": "Hola {{1}} ya."}}, "body.examples", "{{1}} needs an example"),
    (
        "example of no variable",
        {"body": {"text": "Hola {{1}} ya.", "examples": {"1": "a", "2": "b"}}},
        "body.examples",
        "'2' is not a variable",
    ),
    ("header too long", {"header": {"type": "text", "text": "h" * 61}}, "header.text", "at most 60"),
    (
        "two header variables",
        {"header": {"type": "text", "text": "{{1}} y {{2}}", "example": "a"}},
        "header.text",
        "at most one variable",
    ),
    (
        "missing header example",
        {"header": {"type": "text", "text": "Pedido {{1}}"}},
        "header.example",
        "needs an example",
    ),
    (
        "media header over http",
        {"header": {"type": "image", "url": "http://x.example/a.jpg"}},
        "header.url",
        "https://",
    ),
    ("footer too long", {"footer": "f" * 61}, "footer", "at most 60"),
    ("footer with a variable", {"footer": "Tienda {{1}}"}, "footer", "may not hold variables"),
    ("eleven buttons", {"buttons": [QR] * 11}, "buttons", "at most 10"),
    ("three URL buttons", {"buttons": [URL] * 3}, "buttons", "at most 2"),
    (
        "two phone buttons",
        {"buttons": [{"type": "phone_number", "text": "Llamar", "phone_number": "+15550001234"}] * 2},
        "buttons",
        "at most 1",
    ),
    ("quick replies split", {"buttons": [QR, URL, QR]}, "buttons", "next to each other"),
    ("button text too long", {"buttons": [{**QR, "text": "b" * 26}]}, "buttons[0].text", "at most 25"),
    ("button text with a variable", {"buttons": [{**QR, "text": "Hola {{1}}"}]}, "buttons[0].text", "variables"),
    (
        "URL variable in the middle",
        {"buttons": [{**URL, "url": "https://shop.example/{{1}}/track", "example": "8"}]},
        "buttons[0].url",
        "very end of the URL",
    ),
    (
        "URL variable not {{1}}",
        {"buttons": [{**URL, "url": "https://shop.example/{{2}}", "example": "8"}]},
        "buttons[0].url",
        "must be {{1}}",
    ),
    (
        "URL variable without example",
        {"buttons": [{**URL, "url": "https://shop.example/{{1}}"}]},
        "buttons[0].example",
        "needs an example",
    ),
    ("URL not http", {"buttons": [{**URL, "url": "ftp://shop.example/"}]}, "buttons[0].url", "https://"),
    (
        "phone not E.164",
        {"buttons": [{"type": "phone_number", "text": "Llamar", "phone_number": "5550001234"}]},
        "buttons[0].phone_number",
        "E.164",
    ),
]


@pytest.mark.parametrize(("changes", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_names_the_field_and_the_reason(changes: dict[str, Any], field: str, fragment: str) -> None:
    problems = problems_of(**changes)
    assert any(f == field and fragment in message for f, message in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(name="Bad", footer="f" * 61, buttons=[QR] * 11)
    assert {field for field, _ in problems} == {"name", "footer", "buttons"}


def test_files_load_from_yaml_and_toml_and_report_malformed_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: welcome\nlanguage: en\ncategory: marketing\nbody: Hello there, welcome aboard.\n", encoding="utf-8"
    )
    (tmp_path / "b.toml").write_text(
        '[[templates]]\nname = "reminder"\nlanguage = "en_US"\ncategory = "UTILITY"\n'
        '[templates.body]\ntext = "See you at {{1}} today."\nexamples = ["10:30"]\n',
        encoding="utf-8",
    )
    (tmp_path / "broken.yaml").write_text("name: x\nlanguage: en\n", encoding="utf-8")

    loaded = load_templates([tmp_path])

    assert [(s.definition.name, s.definition.category.value) for s in loaded.definitions] == [
        ("welcome", "MARKETING"),
        ("reminder", "UTILITY"),
    ]
    assert all(validate_template(s.definition) == [] for s in loaded.definitions)
    assert sorted(p.field for p in loaded.problems) == ["body", "category"]
    assert all(p.template == str(tmp_path / "broken.yaml") for p in loaded.problems)
