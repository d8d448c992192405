"""WhatsApp templates as Twilio Content (PROVIDERS.md B6), and a template's ContentVariables.

- ``POST /v1/Content`` creates the content; ``POST /v1/Content/{sid}/ApprovalRequests/whatsapp``
  sends it to WhatsApp's review; ``GET /v2/ContentAndApprovals`` lists contents with their approval.
- Twilio numbers a content's variables across the whole content (header, body, URL), where WhatsApp
  numbers them per component and may name them. leadline renumbers: body variables first, then the
  header's, then each URL button's, in :func:`~leadline.templates.definitions.variable_slots` order;
  sends fill ContentVariables with the same numbers.
- A media header is fixed in the content (its ``url``); a send cannot change it.
- An AUTHENTICATION template is a ``whatsapp/authentication`` content: ``add_security_recommendation``,
  ``code_expiration_minutes`` and one ``COPY_CODE`` action with its ``copy_code_text`` (Twilio's
  whatsapp/authentication page); the code is sent as ContentVariables ``{"1": code}``. Twilio offers
  no one-tap action there, so a one-tap template is refused rather than approved as something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from leadline.providers.base import ErrorClass, ProviderError, TemplateSend
from leadline.providers.http import HttpAnswer, get, json_object, post
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.errors import twilio_error_from_response
from leadline.templates.definitions import (
    VARIABLE,
    Button,
    MediaHeader,
    OtpButton,
    PhoneButton,
    QuickReplyButton,
    TemplateDefinition,
    TextHeader,
    variable_slots,
    variables_in,
)
from leadline.templates.providers import PENDING, UNSUBMITTED, RemoteTemplate, Submission

_STATUSES = {"approved": "APPROVED", "pending": PENDING, "received": PENDING, "rejected": "REJECTED", "": UNSUBMITTED}
_PAGE_SIZE = "100"
_MAX_PAGES = 1000
_TYPES = ("whatsapp/card", "twilio/quick-reply", "twilio/call-to-action", "twilio/media", "twilio/text")


def twilio_status(value: object) -> str:
    """An approval status in WhatsApp's upper-case vocabulary (``approved`` → ``APPROVED``)."""
    text = value.strip().lower() if isinstance(value, str) else ""
    return _STATUSES.get(text, text.upper())


class TwilioTemplates:
    """The Content templates of one Twilio account, reviewed for WhatsApp."""

    def __init__(self, channel: TwilioChannelConfig, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._base = channel.content_base_url
        self._headers = {
            "Authorization": aiohttp.encode_basic_auth(channel.account_sid, channel.auth_token.get_secret_value())
        }

    async def submit(self, definition: TemplateDefinition, known_id: str | None) -> Submission:
        # Twilio would happily create a second identical content, so the content is looked for first:
        # by the SID of an earlier submission, else by WhatsApp name and language.
        sid = known_id if known_id and await self._approval(known_id) is not None else None
        created = False
        if sid is None:
            existing = await self.find(definition.name, definition.language)
            sid = existing.provider_template_id if existing else None
        if sid is None:
            answer = await self._post("/v1/Content", twilio_content_request(definition))
            sid = json_object(answer, "Twilio's").get("sid")
            if not isinstance(sid, str) or not sid:
                raise ProviderError(
                    ErrorClass.RETRY_LATER, "malformed_response", "Twilio created content without a sid"
                )
            created = True
        approval = await self._approval(sid) or {}
        if twilio_status(approval.get("status")) == UNSUBMITTED:
            answer = await self._post(
                f"/v1/Content/{sid}/ApprovalRequests/whatsapp",
                {"name": definition.name, "category": definition.category.value},
            )
            approval = json_object(answer, "Twilio's")
        remote = RemoteTemplate(
            provider_template_id=sid,
            name=str(approval.get("name") or definition.name),
            language=definition.language,
            status=twilio_status(approval.get("status")),
            category=str(approval.get("category") or definition.category.value),
            rejection_reason=approval.get("rejection_reason") or None,
            definition=definition,
            raw=approval,
        )
        return Submission(remote, created=created)

    async def find(self, name: str, language: str) -> RemoteTemplate | None:
        for remote in await self.list_templates():
            if remote.name == name and remote.language == language:
                return remote
        return None

    async def list_templates(self) -> list[RemoteTemplate]:
        templates: list[RemoteTemplate] = []
        url: str | None = f"{self._base}/v2/ContentAndApprovals"
        params: Mapping[str, str] | None = {"PageSize": _PAGE_SIZE}
        for _ in range(_MAX_PAGES):
            if url is None:
                break
            answer = await get(self._session, url, params=params, headers=self._headers)
            if not answer.ok:
                raise twilio_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
            data = json_object(answer, "Twilio's")
            for item in data.get("contents") or []:
                remote = remote_from_twilio(item)
                if remote is not None:
                    templates.append(remote)
            meta = data.get("meta")
            next_url = meta.get("next_page_url") if isinstance(meta, dict) else None
            url, params = (next_url, None) if isinstance(next_url, str) and next_url else (None, None)
        return templates

    async def _approval(self, sid: str) -> dict[str, Any] | None:
        """The WhatsApp approval of a content; None when there is no such content."""
        answer = await get(self._session, f"{self._base}/v1/Content/{sid}/ApprovalRequests", headers=self._headers)
        if answer.status == 404:
            return None
        if not answer.ok:
            raise twilio_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
        whatsapp = json_object(answer, "Twilio's").get("whatsapp")
        return whatsapp if isinstance(whatsapp, dict) else {}

    async def _post(self, path: str, body: Mapping[str, Any]) -> HttpAnswer:
        answer = await post(
            self._session,
            f"{self._base}{path}",
            body=orjson.dumps(body),
            content_type="application/json",
            headers=self._headers,
        )
        if not answer.ok:
            raise twilio_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
        return answer


# --------------------------------------------------------------------------------------------
# Definition → Content


def content_variable_numbers(definition: TemplateDefinition) -> dict[str, str]:
    """The ContentVariables key of each slot (see the module docstring); media headers have none."""
    slots = [s for s in variable_slots(definition) if not s.media]
    return {slot.key: str(number) for number, slot in enumerate(slots, start=1)}


def _renumber(text: str, numbers: Mapping[str, str]) -> str:
    return VARIABLE.sub(lambda m: "{{" + numbers.get(m.group(1), m.group(1)) + "}}", text)


def twilio_content_request(definition: TemplateDefinition) -> dict[str, Any]:
    """The body of ``POST /v1/Content`` (the B6 mapping table)."""
    if definition.is_authentication:
        return _authentication_content(definition)
    numbers = content_variable_numbers(definition)
    slots = variable_slots(definition)
    body_numbers = {s.name: numbers[s.key] for s in slots if s.component == "body"}
    body = _renumber(definition.body.text, body_numbers)
    actions = [_action(button, index, numbers) for index, button in enumerate(definition.buttons)]
    header = definition.header
    quick = [b for b in definition.buttons if isinstance(b, QuickReplyButton)]
    if isinstance(header, MediaHeader) and not header.url:
        raise ProviderError(
            ErrorClass.BAD_REQUEST,
            "missing_media_url",
            f"template {definition.key}: Twilio content needs header.url for a media header",
        )
    content: dict[str, Any]
    if header is not None or definition.footer or (quick and len(quick) != len(actions)):
        content_type = "whatsapp/card"
        content = {"body": body}
        if isinstance(header, TextHeader):
            header_numbers = {s.name: numbers[s.key] for s in slots if s.key == "header"}
            content["header_text"] = _renumber(header.text, header_numbers)
        elif isinstance(header, MediaHeader):
            content["media"] = [header.url]
        if definition.footer:
            content["footer"] = definition.footer
        if actions:
            content["actions"] = actions
        if isinstance(header, MediaHeader) and not definition.footer and not actions:
            content_type = "twilio/media"
    elif quick:
        content_type, content = "twilio/quick-reply", {"body": body, "actions": actions}
    elif actions:
        content_type, content = "twilio/call-to-action", {"body": body, "actions": actions}
    else:
        content_type, content = "twilio/text", {"body": body}
    return {
        "friendly_name": definition.name,
        "language": definition.language,
        "variables": {numbers[s.key]: s.example or "" for s in slots if s.key in numbers},
        "types": {content_type: content},
    }


def _authentication_content(definition: TemplateDefinition) -> dict[str, Any]:
    actions: list[dict[str, Any]] = []
    for button in definition.buttons:
        if not isinstance(button, OtpButton):
            continue
        if button.otp_type != "copy_code":
            raise ProviderError(
                ErrorClass.BAD_REQUEST,
                "unsupported_otp_button",
                f"template {definition.key}: Twilio's whatsapp/authentication has copy code buttons only, "
                f"not {button.otp_type}",
            )
        actions.append({"type": "COPY_CODE", "copy_code_text": button.text})
    content: dict[str, Any] = {"add_security_recommendation": bool(definition.security_recommendation)}
    if definition.code_expiration_minutes is not None:
        content["code_expiration_minutes"] = definition.code_expiration_minutes
    content["actions"] = actions
    return {
        "friendly_name": definition.name,
        "language": definition.language,
        "types": {"whatsapp/authentication": content},
    }


def _action(button: Button, index: int, numbers: Mapping[str, str]) -> dict[str, Any]:
    if isinstance(button, QuickReplyButton):
        return {"type": "QUICK_REPLY", "title": button.text, "id": button.payload or button.text}
    if isinstance(button, PhoneButton):
        return {"type": "PHONE_NUMBER", "title": button.text, "phone": button.phone_number}
    if isinstance(button, OtpButton):
        return {"type": "COPY_CODE", "copy_code_text": button.text}
    key = f"button.{index}"
    url = _renumber(button.url, {name: numbers[key] for name in variables_in(button.url)} if key in numbers else {})
    return {"type": "URL", "title": button.text, "url": url}


def twilio_template_send(
    definition: TemplateDefinition, values: Mapping[str, str], provider_template_id: str | None
) -> TemplateSend:
    """The send of ``definition``: the Content SID and every value under its ContentVariables number."""
    numbers = content_variable_numbers(definition)
    ordered = sorted(numbers.items(), key=lambda item: int(item[1]))
    return TemplateSend(
        name=definition.name,
        language=definition.language,
        body_parameters=tuple(values[key] for key, _ in ordered),
        provider_template_id=provider_template_id,
    )


# --------------------------------------------------------------------------------------------
# Content → definition


def remote_from_twilio(item: Any) -> RemoteTemplate | None:
    """A listed content with its WhatsApp approval; None for content never meant for WhatsApp review."""
    if not isinstance(item, dict) or not isinstance(item.get("sid"), str):
        return None
    approval = item.get("approval_requests")
    approval = approval if isinstance(approval, dict) else {}
    name = approval.get("name") or item.get("friendly_name")
    language = item.get("language")
    if not isinstance(name, str) or not isinstance(language, str):
        return None
    category = approval.get("category")
    return RemoteTemplate(
        provider_template_id=item["sid"],
        name=name,
        language=language,
        status=twilio_status(approval.get("status")),
        category=category if isinstance(category, str) and category else None,
        rejection_reason=approval.get("rejection_reason") or None,
        definition=definition_from_twilio(item, name, category if isinstance(category, str) else None),
        raw=item,
    )


def definition_from_twilio(item: Mapping[str, Any], name: str, category: str | None) -> TemplateDefinition | None:
    """Best effort: a content of a type in :data:`_TYPES` back in WhatsApp's per-component numbering."""
    types = item.get("types")
    if not isinstance(types, dict):
        return None
    content_type = next((t for t in _TYPES if t in types), None)
    if content_type is None or not isinstance(types[content_type], dict):
        return None
    content = types[content_type]
    variables = item.get("variables") if isinstance(item.get("variables"), dict) else {}
    assert isinstance(variables, dict)
    body_text = str(content.get("body", ""))
    body_numbers = list(dict.fromkeys(variables_in(body_text)))
    renumber = {old: str(new) for new, old in enumerate(body_numbers, start=1)}
    data: dict[str, Any] = {
        "name": name,
        "language": item.get("language"),
        "category": category or "UTILITY",
        "body": {
            "text": _renumber(body_text, renumber),
            "examples": {renumber[n]: variables.get(n, "") for n in body_numbers},
        },
    }
    if isinstance(content.get("header_text"), str):
        header_vars = variables_in(content["header_text"])
        data["header"] = {
            "type": "text",
            "text": _renumber(content["header_text"], {v: "1" for v in header_vars}),
            "example": variables.get(header_vars[0]) if header_vars else None,
        }
    elif content.get("media"):
        data["header"] = {"type": "image", "url": content["media"][0]}
    if content.get("footer"):
        data["footer"] = content["footer"]
    buttons: list[dict[str, Any]] = []
    for action in content.get("actions") or []:
        kind = str(action.get("type", "")).upper()
        if kind == "QUICK_REPLY":
            buttons.append({"type": "quick_reply", "text": action.get("title"), "payload": action.get("id")})
        elif kind == "URL":
            url_vars = variables_in(str(action.get("url", "")))
            buttons.append(
                {
                    "type": "url",
                    "text": action.get("title"),
                    "url": _renumber(str(action.get("url")), {v: "1" for v in url_vars}),
                    "example": variables.get(url_vars[0]) if url_vars else None,
                }
            )
        elif kind == "PHONE_NUMBER":
            buttons.append({"type": "phone_number", "text": action.get("title"), "phone_number": action.get("phone")})
        else:
            return None
    data["buttons"] = buttons
    try:
        return TemplateDefinition.model_validate(data)
    except ValidationError:
        return None
