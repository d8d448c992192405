"""WhatsApp's rules for a template, checked before anything is submitted.

Each rule yields one :class:`Problem` naming the field, so an author fixes everything in one pass.
The limits are Meta's (Twilio submits to the same WhatsApp review):

- name: lowercase letters, digits and underscores, at most 512 characters;
- language: a WhatsApp language code (``en``, ``en_US``, ``es_MX``, ``pt_BR``);
- body: at most 1024 characters; variables ``{{1}}..{{n}}`` without gaps, or named in lowercase and
  underscores, not both; a variable may not open or close the body, nor touch another one;
- header: text at most 60 characters with at most one variable, or an image, video or document;
- footer: at most 60 characters, no variables;
- buttons: at most 10, quick replies next to each other, at most 2 URL buttons and 1 phone button,
  text at most 25 characters; a URL may end with one variable and nothing else may be variable;
- every variable has an example, and no example is given for a variable that does not exist.

An AUTHENTICATION template follows WhatsApp's own rules instead: no body of its own (WhatsApp's
``<code> is your verification code.`` is used), no header and no footer text, exactly one
one-time-password button (one-tap needs the Android package name and signature hash), and a code
expiration, when given, of 1 to 90 minutes. Other templates may not use those.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from leadline.templates.definitions import (
    AUTHENTICATION_BODY,
    VARIABLE,
    MediaHeader,
    OtpButton,
    PhoneButton,
    Problem,
    QuickReplyButton,
    TemplateDefinition,
    TextHeader,
    UrlButton,
    variables_in,
)
from leadline.templates.errors import InvalidTemplate

NAME_MAX = 512
BODY_MAX = 1024
HEADER_TEXT_MAX = 60
FOOTER_MAX = 60
BUTTONS_MAX = 10
URL_BUTTONS_MAX = 2
PHONE_BUTTONS_MAX = 1
BUTTON_TEXT_MAX = 25
URL_MAX = 2000
PHONE_NUMBER_MAX = 20
CODE_EXPIRATION_MIN = 1
CODE_EXPIRATION_MAX = 90
SIGNATURE_HASH_LENGTH = 11

_NAME = re.compile(r"[a-z0-9_]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_NAMED_VARIABLE = re.compile(r"[a-z_]+")
_POSITIONAL_VARIABLE = re.compile(r"[1-9][0-9]*")
_ADJACENT = re.compile(r"\}\}\s*\{\{")
_ENDS_WITH_VARIABLE = re.compile(r"\{\{[^{}]*\}\}$")
_PHONE = re.compile(r"\+[1-9][0-9]{5,18}")
_PACKAGE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")


def validate_template(definition: TemplateDefinition) -> list[Problem]:
    """Every rule ``definition`` breaks; empty when it can be submitted."""
    problems: list[Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(field, message, definition.key))

    _check_name(definition, problem)
    if not _LANGUAGE.fullmatch(definition.language):
        problem("language", f"{definition.language!r} is not a WhatsApp language code such as en, en_US or es_MX")
    if definition.is_authentication:
        _check_authentication(definition, problem)
        return problems
    if definition.security_recommendation is not None:
        problem("security_recommendation", "is for AUTHENTICATION templates only")
    if definition.code_expiration_minutes is not None:
        problem("code_expiration_minutes", "is for AUTHENTICATION templates only")
    _check_body(definition, problem)
    _check_header(definition, problem)
    _check_footer(definition, problem)
    _check_buttons(definition, problem)
    return problems


def ensure_valid(definition: TemplateDefinition) -> None:
    problems = validate_template(definition)
    if problems:
        raise InvalidTemplate(problems)


_Report = Callable[[str, str], None]


def _check_name(definition: TemplateDefinition, problem: _Report) -> None:
    name = definition.name
    if not name:
        problem("name", "is empty")
    elif not _NAME.fullmatch(name):
        problem("name", f"{name!r} may only hold lowercase letters, digits and underscores")
    if len(name) > NAME_MAX:
        problem("name", f"is {len(name)} characters long; at most {NAME_MAX}")


def _check_body(definition: TemplateDefinition, problem: _Report) -> None:
    text = definition.body.text
    if not text.strip():
        problem("body.text", "is empty")
        return
    if len(text) > BODY_MAX:
        problem("body.text", f"is {len(text)} characters long; at most {BODY_MAX}")
    names = variables_in(text)
    for name in dict.fromkeys(names):
        if not (_POSITIONAL_VARIABLE.fullmatch(name) or _NAMED_VARIABLE.fullmatch(name)):
            problem(
                "body.text",
                f"variable {{{{{name}}}}} must be a number ({{{{1}}}}) or a name in lowercase letters and "
                "underscores ({{first_name}})",
            )
    positional = sorted({int(n) for n in names if _POSITIONAL_VARIABLE.fullmatch(n)})
    named = {n for n in names if _NAMED_VARIABLE.fullmatch(n)}
    if positional and named:
        problem("body.text", "mixes numbered ({{1}}) and named ({{first_name}}) variables; use one kind")
    if positional and positional != list(range(1, len(positional) + 1)):
        missing = sorted(set(range(1, max(positional) + 1)) - set(positional))
        problem(
            "body.text",
            "variables must be numbered {{1}} to {{n}} without gaps; missing "
            + ", ".join(f"{{{{{n}}}}}" for n in missing),
        )
    stripped = text.strip()
    if VARIABLE.match(stripped):
        problem("body.text", "may not start with a variable; put words before it")
    if names and VARIABLE.fullmatch(stripped[stripped.rfind("{{") :]):
        problem("body.text", "may not end with a variable; put words after it")
    if _ADJACENT.search(text):
        problem("body.text", "has two variables next to each other; put words between them")
    _check_examples("body", set(names), definition.body.examples, problem)


def _check_examples(where: str, names: set[str], examples: dict[str, str], problem: _Report) -> None:
    for name in sorted(names - set(examples), key=_natural):
        problem(f"{where}.examples", f"variable {{{{{name}}}}} needs an example value")
    for name in sorted(set(examples) - names, key=_natural):
        problem(f"{where}.examples", f"{name!r} is not a variable of the {where}")
    for name, value in examples.items():
        if name in names and not value.strip():
            problem(f"{where}.examples.{name}", "is empty")


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (0, name)


def _check_header(definition: TemplateDefinition, problem: _Report) -> None:
    header = definition.header
    if isinstance(header, TextHeader):
        if not header.text.strip():
            problem("header.text", "is empty")
        if len(header.text) > HEADER_TEXT_MAX:
            problem("header.text", f"is {len(header.text)} characters long; at most {HEADER_TEXT_MAX}")
        names = variables_in(header.text)
        if len(names) > 1:
            problem("header.text", "may hold at most one variable")
        for name in names[:1]:
            if not (_NAMED_VARIABLE.fullmatch(name) or name == "1"):
                problem("header.text", f"its variable must be {{{{1}}}} or a lowercase name, not {{{{{name}}}}}")
        if names and not (header.example or "").strip():
            problem("header.example", f"variable {{{{{names[0]}}}}} needs an example value")
        if not names and header.example is not None:
            problem("header.example", "the header has no variable to give an example for")
    elif isinstance(header, MediaHeader) and header.url is not None and not header.url.startswith("https://"):
        problem("header.url", "must be an https:// URL")


def _check_footer(definition: TemplateDefinition, problem: _Report) -> None:
    footer = definition.footer
    if footer is None:
        return
    if not footer.strip():
        problem("footer", "is empty; leave it out instead")
    if len(footer) > FOOTER_MAX:
        problem("footer", f"is {len(footer)} characters long; at most {FOOTER_MAX}")
    if variables_in(footer):
        problem("footer", "may not hold variables")


def _check_buttons(definition: TemplateDefinition, problem: _Report) -> None:
    buttons = definition.buttons
    if len(buttons) > BUTTONS_MAX:
        problem("buttons", f"has {len(buttons)} buttons; at most {BUTTONS_MAX}")
    url_count = sum(isinstance(b, UrlButton) for b in buttons)
    phone_count = sum(isinstance(b, PhoneButton) for b in buttons)
    if url_count > URL_BUTTONS_MAX:
        problem("buttons", f"has {url_count} URL buttons; at most {URL_BUTTONS_MAX}")
    if phone_count > PHONE_BUTTONS_MAX:
        problem("buttons", f"has {phone_count} phone number buttons; at most {PHONE_BUTTONS_MAX}")
    kinds = ["quick_reply" if isinstance(b, QuickReplyButton) else "call_to_action" for b in buttons]
    groups = [kind for i, kind in enumerate(kinds) if i == 0 or kinds[i - 1] != kind]
    if groups.count("quick_reply") > 1:
        problem("buttons", "quick reply buttons must be next to each other, not split by URL or phone buttons")
    for index, button in enumerate(buttons):
        where = f"buttons[{index}]"
        if isinstance(button, OtpButton):
            problem(f"{where}.type", "one-time-password buttons are for AUTHENTICATION templates only")
        if not button.text.strip():
            problem(f"{where}.text", "is empty")
        if len(button.text) > BUTTON_TEXT_MAX:
            problem(f"{where}.text", f"is {len(button.text)} characters long; at most {BUTTON_TEXT_MAX}")
        if variables_in(button.text):
            problem(f"{where}.text", "may not hold variables")
        if isinstance(button, UrlButton):
            _check_url_button(where, button, problem)
        elif isinstance(button, PhoneButton) and not (
            _PHONE.fullmatch(button.phone_number) and len(button.phone_number) <= PHONE_NUMBER_MAX
        ):
            problem(f"{where}.phone_number", f"{button.phone_number!r} is not a number in E.164 form (+15550001234)")


def _check_url_button(where: str, button: UrlButton, problem: _Report) -> None:
    url = button.url
    if not url.startswith(("https://", "http://")):
        problem(f"{where}.url", "must start with https:// or http://")
    if len(url) > URL_MAX:
        problem(f"{where}.url", f"is {len(url)} characters long; at most {URL_MAX}")
    names = variables_in(url)
    if len(names) > 1:
        problem(f"{where}.url", "may hold at most one variable")
    if names:
        if names[0] != "1":
            problem(f"{where}.url", f"its variable must be {{{{1}}}}, not {{{{{names[0]}}}}}")
        if not _ENDS_WITH_VARIABLE.search(url):
            problem(f"{where}.url", "its variable may only stand at the very end of the URL")
        if not (button.example or "").strip():
            problem(f"{where}.example", "the URL's variable needs an example value")
    elif button.example is not None:
        problem(f"{where}.example", "the URL has no variable to give an example for")


def _check_authentication(definition: TemplateDefinition, problem: _Report) -> None:
    if definition.body.text != AUTHENTICATION_BODY or definition.body.examples:
        problem(
            "body",
            f"an AUTHENTICATION template's body is fixed by WhatsApp ({AUTHENTICATION_BODY!r}); leave it out",
        )
    if isinstance(definition.header, MediaHeader):
        problem("header", "an AUTHENTICATION template may not have a media header")
    elif definition.header is not None:
        problem("header", "an AUTHENTICATION template may not have a header")
    if definition.footer is not None:
        problem("footer", "an AUTHENTICATION template's footer is set by code_expiration_minutes, not written")
    minutes = definition.code_expiration_minutes
    if minutes is not None and not CODE_EXPIRATION_MIN <= minutes <= CODE_EXPIRATION_MAX:
        problem(
            "code_expiration_minutes",
            f"is {minutes}; from {CODE_EXPIRATION_MIN} to {CODE_EXPIRATION_MAX} minutes",
        )
    otp = [b for b in definition.buttons if isinstance(b, OtpButton)]
    if len(definition.buttons) != 1 or len(otp) != 1:
        problem(
            "buttons",
            f"an AUTHENTICATION template has exactly one one-time-password button (type: otp), "
            f"not {len(otp)} among {len(definition.buttons)} buttons",
        )
    for index, button in enumerate(definition.buttons):
        if isinstance(button, OtpButton):
            _check_otp_button(f"buttons[{index}]", button, problem)


def _check_otp_button(where: str, button: OtpButton, problem: _Report) -> None:
    for label, text in (("text", button.text), ("autofill_text", button.autofill_text)):
        if text is None:
            continue
        if not text.strip():
            problem(f"{where}.{label}", "is empty")
        if len(text) > BUTTON_TEXT_MAX:
            problem(f"{where}.{label}", f"is {len(text)} characters long; at most {BUTTON_TEXT_MAX}")
        if variables_in(text):
            problem(f"{where}.{label}", "may not hold variables")
    if button.otp_type == "copy_code":
        for label in ("autofill_text", "package_name", "signature_hash"):
            if getattr(button, label) is not None:
                problem(f"{where}.{label}", "is for one_tap buttons only")
        return
    if button.package_name is None or not _PACKAGE_NAME.fullmatch(button.package_name):
        problem(f"{where}.package_name", "one_tap needs the Android app's package name, such as com.example.app")
    if button.signature_hash is None or len(button.signature_hash) != SIGNATURE_HASH_LENGTH:
        problem(f"{where}.signature_hash", f"one_tap needs the app's {SIGNATURE_HASH_LENGTH}-character signature hash")
