"""AUTHENTICATION templates: WhatsApp's rules for them, and the exact Meta and Twilio bodies.

The shapes are those of Meta's "copy code" and "one-tap autofill" authentication template pages
(creation: BODY ``add_security_recommendation``, FOOTER ``code_expiration_minutes``, BUTTONS with one
OTP button; sending: the code as the body parameter and as the parameter of button 0, ``sub_type``
``url``) and Twilio's ``whatsapp/authentication`` content type (``actions`` with ``COPY_CODE`` and
``copy_code_text``; the code sent as ContentVariables ``{"1": code}``).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.meta.client import template_object
from leadline.providers.meta.templates import meta_template_request
from leadline.providers.twilio.client import content_variables
from leadline.providers.twilio.templates import twilio_content_request
from leadline.templates.definitions import AUTHENTICATION_BODY, TemplateDefinition, variable_slots
from leadline.templates.errors import InvalidTemplateVariables
from leadline.templates.render import bind_variables, render_send, render_text
from leadline.templates.validation import validate_template

LOGIN_CODE: dict[str, Any] = {
    "name": "login_code",
    "language": "en_US",
    "category": "AUTHENTICATION",
    "security_recommendation": True,
    "code_expiration_minutes": 10,
    "buttons": [{"type": "otp", "text": "Copy code"}],
}
ONE_TAP = {
    "type": "otp",
    "otp_type": "one_tap",
    "text": "Copy code",
    "autofill_text": "Autofill",
    "package_name": "com.example.app",
    "signature_hash": "K8a/AINcGX7",
}


def auth(**changes: Any) -> TemplateDefinition:
    return TemplateDefinition.model_validate({**LOGIN_CODE, **changes})


def problems_of(**changes: Any) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in validate_template(auth(**changes))]


# --------------------------------------------------------------------------------------------
# Definition and validation


def test_an_authentication_template_gets_whatsapps_body_and_takes_one_code() -> None:
    definition = auth()
    assert definition.body.text == AUTHENTICATION_BODY == "{{1}} is your verification code."
    assert [slot.key for slot in variable_slots(definition)] == ["code"]
    assert problems_of() == []


def test_minimal_copy_code_and_one_tap_templates_are_valid() -> None:
    minimal = {"name": "otp", "language": "es", "category": "authentication", "buttons": [{"type": "otp"}]}
    assert validate_template(TemplateDefinition.model_validate(minimal)) == []
    assert problems_of(buttons=[ONE_TAP]) == []


AUTH_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("custom body", {"body": "Your code is {{1}}."}, "body", "fixed by WhatsApp"),
    ("the fixed body with examples", {"body": {"text": AUTHENTICATION_BODY, "examples": ["1"]}}, "body", "fixed"),
    ("media header", {"header": {"type": "image", "url": "https://x.example/a.jpg"}}, "header", "media header"),
    ("text header", {"header": {"type": "text", "text": "Login"}}, "header", "may not have a header"),
    ("written footer", {"footer": "Acme"}, "footer", "code_expiration_minutes"),
    ("no button", {"buttons": []}, "buttons", "exactly one one-time-password button"),
    ("two otp buttons", {"buttons": [{"type": "otp"}, {"type": "otp"}]}, "buttons", "exactly one"),
    ("otp and quick reply", {"buttons": [{"type": "otp"}, {"type": "quick_reply", "text": "No"}]}, "buttons", "one"),
    ("quick reply instead", {"buttons": [{"type": "quick_reply", "text": "No"}]}, "buttons", "exactly one"),
    ("expiration of 0", {"code_expiration_minutes": 0}, "code_expiration_minutes", "from 1 to 90"),
    ("expiration of 91", {"code_expiration_minutes": 91}, "code_expiration_minutes", "from 1 to 90"),
    ("button text too long", {"buttons": [{"type": "otp", "text": "c" * 26}]}, "buttons[0].text", "at most 25"),
    (
        "one-tap without app",
        {"buttons": [{**ONE_TAP, "package_name": None}]},
        "buttons[0].package_name",
        "package",
    ),
    (
        "one-tap with a short hash",
        {"buttons": [{**ONE_TAP, "signature_hash": "abc"}]},
        "buttons[0].signature_hash",
        "11-character",
    ),
    (
        "copy code with an app",
        {"buttons": [{"type": "otp", "package_name": "com.example.app"}]},
        "buttons[0].package_name",
        "one_tap buttons only",
    ),
]


@pytest.mark.parametrize(("changes", "field", "reason"), [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES])
def test_authentication_rule(changes: dict[str, Any], field: str, reason: str) -> None:
    problems = problems_of(**changes)
    assert [f for f, _ in problems] == [field], problems
    assert reason in problems[0][1]


def test_expiration_bounds_are_inclusive() -> None:
    assert problems_of(code_expiration_minutes=1) == problems_of(code_expiration_minutes=90) == []


def test_options_of_an_authentication_template_change_its_fingerprint_but_not_others() -> None:
    assert auth().fingerprint() != auth(code_expiration_minutes=5).fingerprint()
    utility = {"name": "n", "language": "en", "category": "UTILITY", "body": "Hi there"}
    assert "security_recommendation" not in TemplateDefinition.model_validate(utility).to_json()


# --------------------------------------------------------------------------------------------
# Variables and rendering


def test_the_code_is_given_by_name_or_by_position() -> None:
    assert bind_variables(auth(), {"code": "123456"}) == bind_variables(auth(), ["123456"]) == {"code": "123456"}


@pytest.mark.parametrize(
    ("variables", "fields"),
    [
        ({}, {"variables.code"}),
        ({"1": "123456"}, {"variables.1", "variables.code"}),
        (["1", "2"], {"variables"}),
        ({"code": "12 \n34"}, {"variables.code"}),
    ],
)
def test_bad_codes_are_refused(variables: Any, fields: set[str]) -> None:
    with pytest.raises(InvalidTemplateVariables) as refused:
        bind_variables(auth(), variables)
    assert {p.field for p in refused.value.problems} == fields


def test_timeline_text_is_what_whatsapp_shows() -> None:
    values = {"code": "123456"}
    plain = auth(security_recommendation=None, code_expiration_minutes=None)
    assert render_text(plain, values) == "123456 is your verification code."
    assert render_text(auth(), values) == (
        "123456 is your verification code. For your security, do not share this code.\nThis code expires in 10 minutes."
    )


# --------------------------------------------------------------------------------------------
# Meta


def test_meta_create_request_for_copy_code() -> None:
    assert meta_template_request(auth()) == {
        "name": "login_code",
        "language": "en_US",
        "category": "AUTHENTICATION",
        "components": [
            {"type": "BODY", "add_security_recommendation": True},
            {"type": "FOOTER", "code_expiration_minutes": 10},
            {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]},
        ],
    }


def test_meta_create_request_for_one_tap_without_options() -> None:
    definition = auth(security_recommendation=None, code_expiration_minutes=None, buttons=[ONE_TAP])
    assert meta_template_request(definition)["components"] == [
        {"type": "BODY", "add_security_recommendation": False},
        {
            "type": "BUTTONS",
            "buttons": [
                {
                    "type": "OTP",
                    "otp_type": "ONE_TAP",
                    "text": "Copy code",
                    "autofill_text": "Autofill",
                    "package_name": "com.example.app",
                    "signature_hash": "K8a/AINcGX7",
                }
            ],
        },
    ]


def test_meta_send_gives_the_code_to_the_body_and_to_the_button() -> None:
    send = render_send("meta", auth(), {"code": "123456"}, provider_template_id="594425479261597")
    assert template_object(send) == {
        "name": "login_code",
        "language": {"code": "en_US"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "123456"}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "123456"}]},
        ],
    }


# --------------------------------------------------------------------------------------------
# Twilio


def test_twilio_content_request_is_a_whatsapp_authentication_content() -> None:
    assert twilio_content_request(auth()) == {
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


def test_twilio_content_says_no_security_recommendation_explicitly() -> None:
    # Twilio's default is TRUE, Meta's is false: leadline always says which.
    content = twilio_content_request(auth(security_recommendation=None, code_expiration_minutes=None))
    assert content["types"] == {
        "whatsapp/authentication": {
            "add_security_recommendation": False,
            "actions": [{"type": "COPY_CODE", "copy_code_text": "Copy code"}],
        }
    }


def test_twilio_refuses_a_one_tap_button_it_cannot_offer() -> None:
    with pytest.raises(ProviderError) as refused:
        twilio_content_request(auth(buttons=[ONE_TAP]))
    assert (refused.value.error_class, refused.value.code) == (ErrorClass.BAD_REQUEST, "unsupported_otp_button")


def test_twilio_send_is_the_content_sid_with_the_code_as_variable_1() -> None:
    send = render_send("twilio", auth(), {"code": "123456"}, provider_template_id="HX0123")
    assert send.provider_template_id == "HX0123"
    assert orjson.loads(content_variables(send) or "") == {"1": "123456"}
