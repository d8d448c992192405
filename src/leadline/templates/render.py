"""A send's variables, given by name or by position, checked and rendered.

:func:`bind_variables` turns what a caller gives into one value per slot (see
:mod:`leadline.templates.definitions`); :func:`render_text` is what the customer reads, for the
timeline; :func:`render_send` is the provider's :class:`~leadline.providers.base.TemplateSend`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from leadline.providers.base import TemplateSend
from leadline.templates.definitions import (
    CODE_EXPIRATION_FOOTER,
    SECURITY_RECOMMENDATION,
    Problem,
    Slot,
    TemplateDefinition,
    TextHeader,
    substitute,
    variable_slots,
)
from leadline.templates.errors import InvalidTemplateVariables

_TOO_MANY_SPACES = re.compile(r" {5,}")

Variables = Mapping[str, str] | Sequence[str]


def bind_variables(definition: TemplateDefinition, variables: Variables) -> dict[str, str]:
    """One value per slot key, or :class:`InvalidTemplateVariables` listing every problem.

    A mapping names its values by slot key (``"1"``, ``"first_name"``, ``"header"``, ``"button.1"``);
    a list fills the slots in order. A media header's slot may be left out: its ``url`` is sent.
    """
    slots = variable_slots(definition)
    problems: list[Problem] = []
    given: dict[str, str]
    if isinstance(variables, str | bytes):
        raise InvalidTemplateVariables([Problem("variables", "must be a mapping or a list, not a string")])
    if isinstance(variables, Mapping):
        given = dict(variables)
        known = {slot.key for slot in slots}
        for key in given:
            if key not in known:
                expected = ", ".join(repr(k) for k in known) or "none"
                problems.append(
                    Problem(f"variables.{key}", f"is not a variable of this template (it takes {expected})")
                )
    else:
        values = list(variables)
        required = [slot for slot in slots if not slot.optional]
        if not len(required) <= len(values) <= len(slots):
            count = str(len(slots)) if len(required) == len(slots) else f"{len(required)} to {len(slots)}"
            problems.append(Problem("variables", f"got {len(values)} values; the template takes {count}"))
        given = {slot.key: value for slot, value in zip(slots, values, strict=False)}
    bound: dict[str, str] = {}
    for slot in slots:
        value = given.get(slot.key)
        if value is None:
            if slot.optional and slot.example is not None:
                bound[slot.key] = slot.example
            elif isinstance(variables, Mapping):
                problems.append(Problem(f"variables.{slot.key}", "is missing"))
            continue
        problem = _value_problem(slot, value)
        if problem:
            problems.append(Problem(f"variables.{slot.key}", problem))
        bound[slot.key] = value
    if problems:
        raise InvalidTemplateVariables(problems)
    return bound


def _value_problem(slot: Slot, value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value.strip():
        return "is empty"
    if slot.media:
        return None if value.startswith("https://") else "the header media must be an https:// URL"
    # WhatsApp refuses parameters with line breaks, tabs or more than four spaces in a row (132018).
    if "\n" in value or "\t" in value:
        return "may not hold line breaks or tabs"
    if _TOO_MANY_SPACES.search(value):
        return "may not hold more than four spaces in a row"
    return None


def render_text(definition: TemplateDefinition, values: Mapping[str, str]) -> str:
    """The text the customer reads: header text, body and footer, variables filled in.

    For an AUTHENTICATION template, WhatsApp's English text (the customer reads it in the template's
    language): ``123456 is your verification code.``, the security recommendation and the expiration."""
    if definition.is_authentication:
        text = substitute(definition.body.text, {"1": values[variable_slots(definition)[0].key]})
        if definition.security_recommendation:
            text = f"{text} {SECURITY_RECOMMENDATION}"
        if definition.code_expiration_minutes is not None:
            text += "\n" + CODE_EXPIRATION_FOOTER.format(minutes=definition.code_expiration_minutes)
        return text
    body_values = {slot.name: values[slot.key] for slot in variable_slots(definition) if slot.component == "body"}
    parts: list[str] = []
    if isinstance(definition.header, TextHeader):
        header_values = {s.name: values[s.key] for s in variable_slots(definition) if s.key == "header"}
        parts.append(substitute(definition.header.text, header_values))
    parts.append(substitute(definition.body.text, body_values))
    if definition.footer:
        parts.append(definition.footer)
    return "\n".join(parts)


def render_send(
    provider: str, definition: TemplateDefinition, values: Mapping[str, str], *, provider_template_id: str | None
) -> TemplateSend:
    """The :class:`TemplateSend` for ``provider`` (its own module knows the format)."""
    from leadline.templates.providers import template_send_renderer

    return template_send_renderer(provider)(definition, values, provider_template_id)
