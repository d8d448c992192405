"""A WhatsApp template defined once, provider-neutral, and the files it is kept in.

The models here describe a template's *shape*; WhatsApp's rules (lengths, numbering, button limits)
are checked separately by :mod:`leadline.templates.validation`, so that a template imported from a
provider is stored even when it breaks a rule, and every problem of a hand-written one is reported at
once instead of the first one only.

Variables are written ``{{1}}``, ``{{2}}``... (positional) or ``{{first_name}}`` (named). Every
variable of a template has a *slot key*, the name a caller gives its value under:

- body variables: their own name (``"1"``, ``"first_name"``);
- the header variable (or the media of a media header): ``"header"``;
- the variable at the end of URL button ``i`` (counted from 0 among all buttons): ``"button.<i>"``;
- the one-time password of an AUTHENTICATION template: ``"code"`` (its only variable).

Given as a list instead, values fill the slots in :func:`variable_slots` order: body variables, then
the header, then URL buttons.

An AUTHENTICATION template has a body chosen by WhatsApp (:data:`AUTHENTICATION_BODY`, translated
into the template's language), which leadline fills in when it is left out; what an author chooses is
``security_recommendation``, ``code_expiration_minutes`` and one :class:`OtpButton`.
"""

from __future__ import annotations

import enum
import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TEMPLATE_FILE_SUFFIXES = (".yaml", ".yml", ".toml")

VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
"""A ``{{...}}`` placeholder; what is inside is checked by validation."""

AUTHENTICATION_BODY = "{{1}} is your verification code."
"""The body WhatsApp gives every AUTHENTICATION template (in English; WhatsApp translates it)."""
SECURITY_RECOMMENDATION = "For your security, do not share this code."
"""Added to the body by ``security_recommendation: true``."""
CODE_EXPIRATION_FOOTER = "This code expires in {minutes} minutes."
"""The footer ``code_expiration_minutes`` adds."""
CODE_SLOT = "code"


class Category(enum.StrEnum):
    MARKETING = "MARKETING"
    UTILITY = "UTILITY"
    AUTHENTICATION = "AUTHENTICATION"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextHeader(_Model):
    type: Literal["text"] = "text"
    text: str
    example: str | None = None
    """The example value of the header's variable, when it has one."""


class MediaHeader(_Model):
    type: Literal["image", "video", "document"]
    url: str | None = None
    """The media sent when a send gives none (and the media of the Twilio Content)."""
    meta_handle: str | None = None
    """Meta wants the example of a media header as an upload handle (``4::...``) from its Resumable
    Upload API, not a URL; needed to submit to Meta only."""


Header = Annotated[TextHeader | MediaHeader, Field(discriminator="type")]


class Body(_Model):
    text: str
    examples: dict[str, str] = Field(default_factory=dict)
    """The example value of each variable, by its name (``"1"``, ``"first_name"``)."""

    @field_validator("examples", mode="before")
    @classmethod
    def _list_means_positional(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {str(position): item for position, item in enumerate(value, start=1)}
        if isinstance(value, dict):
            return {str(key): item for key, item in value.items()}
        return value


class QuickReplyButton(_Model):
    type: Literal["quick_reply"] = "quick_reply"
    text: str
    payload: str | None = None
    """What a tap reports back (Twilio's action id); the button text when absent."""


class UrlButton(_Model):
    type: Literal["url"] = "url"
    text: str
    url: str
    """May end with one variable, ``https://shop.example/t/{{1}}``."""
    example: str | None = None
    """The example value of the URL's variable (``8812``), not the whole URL."""


class PhoneButton(_Model):
    type: Literal["phone_number"] = "phone_number"
    text: str
    phone_number: str


class OtpButton(_Model):
    """The one-time-password button of an AUTHENTICATION template: copy code, or one-tap autofill on
    Android (which falls back to copy code when the app's handshake did not happen)."""

    type: Literal["otp"] = "otp"
    otp_type: Literal["copy_code", "one_tap"] = "copy_code"
    text: str = "Copy code"
    """The copy code button's label."""
    autofill_text: str | None = None
    """one_tap: the autofill button's label (WhatsApp's own when absent)."""
    package_name: str | None = None
    """one_tap: the Android app's package name (``com.example.app``)."""
    signature_hash: str | None = None
    """one_tap: the app's 11-character signing key hash."""


Button = Annotated[QuickReplyButton | UrlButton | PhoneButton | OtpButton, Field(discriminator="type")]


class TemplateDefinition(_Model):
    name: str
    language: str
    category: Category
    header: Header | None = None
    body: Body
    footer: str | None = None
    buttons: list[Button] = Field(default_factory=list)
    security_recommendation: bool | None = None
    """AUTHENTICATION only: add "For your security, do not share this code." to the body."""
    code_expiration_minutes: int | None = None
    """AUTHENTICATION only: the footer "This code expires in N minutes." (1 to 90); the button stops
    working after that long."""

    @model_validator(mode="before")
    @classmethod
    def _body_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("body"), str):
            data = {**data, "body": {"text": data["body"]}}
        if isinstance(data, dict) and isinstance(data.get("category"), str):
            data = {**data, "category": data["category"].upper()}
        if isinstance(data, dict) and data.get("category") == Category.AUTHENTICATION and "body" not in data:
            data = {**data, "body": {"text": AUTHENTICATION_BODY}}
        return data

    @property
    def is_authentication(self) -> bool:
        return self.category is Category.AUTHENTICATION

    @property
    def key(self) -> str:
        return f"{self.name} ({self.language})"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def fingerprint(self) -> str:
        """Changes whenever anything a provider approves changes."""
        return hashlib.sha256(orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()


# --------------------------------------------------------------------------------------------
# Variables


def variables_in(text: str) -> list[str]:
    """The names inside ``{{...}}`` in order of appearance, repeats included."""
    return [match.group(1) for match in VARIABLE.finditer(text)]


def body_variables(definition: TemplateDefinition) -> list[str]:
    """Each body variable once: numerically for positional ones, by first appearance for named ones."""
    unique = list(dict.fromkeys(variables_in(definition.body.text)))
    if unique and all(name.isdigit() for name in unique):
        return sorted(unique, key=int)
    return unique


def is_named(definition: TemplateDefinition) -> bool:
    """Whether the template uses named variables (``{{first_name}}``) rather than ``{{1}}``."""
    names = [*variables_in(definition.body.text)]
    if isinstance(definition.header, TextHeader):
        names += variables_in(definition.header.text)
    return any(not name.isdigit() for name in names)


@dataclass(frozen=True, slots=True)
class Slot:
    """One value a send must give."""

    key: str
    """What the caller names it by (see the module docstring)."""
    component: Literal["body", "header", "button"]
    name: str
    """The variable's name inside its component (``"1"``, ``"first_name"``); the media kind for a media header."""
    button_index: int | None = None
    example: str | None = None
    media: bool = False
    """The slot is a media header's URL, not text."""
    optional: bool = False
    """A media header's URL: the definition's ``url`` is sent when none is given."""


def variable_slots(definition: TemplateDefinition) -> list[Slot]:
    """Every value a send of this template takes, in positional order."""
    if definition.is_authentication:
        # One value, the code: WhatsApp's fixed body shows it and the OTP button copies (or fills) it.
        return [Slot(CODE_SLOT, "body", "1")]
    slots = [
        Slot(name, "body", name, example=definition.body.examples.get(name)) for name in body_variables(definition)
    ]
    header = definition.header
    if isinstance(header, TextHeader):
        names = list(dict.fromkeys(variables_in(header.text)))
        if names:
            slots.append(Slot("header", "header", names[0], example=header.example))
    elif isinstance(header, MediaHeader):
        slots.append(
            Slot("header", "header", header.type, example=header.url, media=True, optional=header.url is not None)
        )
    for index, button in enumerate(definition.buttons):
        if isinstance(button, UrlButton):
            names = variables_in(button.url)
            if names:
                slots.append(Slot(f"button.{index}", "button", names[0], button_index=index, example=button.example))
    return slots


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{{name}}`` replaced by its value (unknown names are left as they are)."""
    return VARIABLE.sub(lambda match: values.get(match.group(1), match.group(0)), text)


# --------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template, naming the field it is in."""

    field: str
    message: str
    template: str | None = None
    """``name (language)`` or the file it came from."""

    def __str__(self) -> str:
        prefix = f"{self.template}: " if self.template else ""
        return f"{prefix}{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class SourcedDefinition:
    definition: TemplateDefinition
    source: str
    """``path`` or ``path#index`` for a file holding several templates."""


@dataclass(slots=True)
class LoadedTemplates:
    definitions: list[SourcedDefinition] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def parse_definition(data: Any, *, source: str | None = None) -> TemplateDefinition | list[Problem]:
    """A definition from plain data (a parsed file, an API body), or the problems in its shape."""
    try:
        return TemplateDefinition.model_validate(data)
    except ValidationError as exc:
        return [
            Problem(".".join(str(part) for part in error["loc"]) or "(template)", error["msg"], source)
            for error in exc.errors(include_url=False)
        ]


def template_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEMPLATE_FILE_SUFFIXES)


def load_templates(paths: Iterable[Path]) -> LoadedTemplates:
    """Read template files (a folder is read recursively). A file holds one template, a list of them,
    or a ``templates`` list. Unreadable files and malformed templates become problems, not exceptions."""
    loaded = LoadedTemplates()
    for path in paths:
        for file in template_files(path) if path.is_dir() else [path]:
            _load_file(file, loaded)
    return loaded


def _load_file(file: Path, loaded: LoadedTemplates) -> None:
    try:
        text = file.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if file.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        loaded.problems.append(Problem("(file)", f"cannot be read: {exc}", str(file)))
        return
    if isinstance(data, dict) and "templates" in data:
        data = data["templates"]
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        source = str(file) if len(items) == 1 else f"{file}#{index}"
        parsed = parse_definition(item, source=source)
        if isinstance(parsed, list):
            loaded.problems.extend(parsed)
        else:
            loaded.definitions.append(SourcedDefinition(parsed, source))
