"""WhatsApp template management on the Graph API (PROVIDERS.md A5), and a template's send parameters.

- ``POST /{waba-id}/message_templates`` creates a template; Meta answers an error when the WABA has
  one of that name and language already, and that one is then adopted.
- ``GET /{waba-id}/message_templates`` lists them, page by page (``paging.next``).
- Sends name the template and fill ``{{1}}``... positionally, or by ``parameter_name`` for templates
  created with ``parameter_format: NAMED``.
- AUTHENTICATION templates are created from options, not text: BODY ``add_security_recommendation``,
  FOOTER ``code_expiration_minutes``, BUTTONS ``[{"type": "OTP", "otp_type": "COPY_CODE"|"ONE_TAP",
  ...}]`` (Meta's "copy code" and "one-tap autofill" authentication template pages). A send gives the
  code twice: as the body parameter and as the parameter of the button (``sub_type: url``, index 0),
  since Meta stores the OTP button as a URL button.
- A media header is reviewed from an upload handle: without ``meta_handle``, the example ``url`` is
  downloaded and uploaded through the channel's app (:mod:`leadline.providers.meta.uploads`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from leadline.providers.base import ErrorClass, ProviderError, TemplateSend
from leadline.providers.http import get, json_object, post
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.errors import meta_error_from_response
from leadline.providers.meta.uploads import fetch_example_media, upload_example_media
from leadline.templates.definitions import (
    Button,
    Header,
    MediaHeader,
    OtpButton,
    PhoneButton,
    QuickReplyButton,
    TemplateDefinition,
    TextHeader,
    UrlButton,
    is_named,
    substitute,
    variable_slots,
    variables_in,
)
from leadline.templates.providers import PENDING, RemoteTemplate, Submission, TemplateStatusReport

LIST_FIELDS = "id,name,language,status,category,components,rejected_reason,parameter_format"
_PAGE_SIZE = "100"
_MAX_PAGES = 1000


class MetaTemplates:
    """The message templates of one channel's WhatsApp Business Account."""

    def __init__(self, channel: MetaChannelConfig, session: aiohttp.ClientSession) -> None:
        if not channel.waba_id:
            raise ProviderError(
                ErrorClass.CHANNEL_FAILURE,
                "no_waba_id",
                f"channel {channel.name!r} has no waba_id; templates live there",
            )
        if channel.access_token is None:
            raise ProviderError(
                ErrorClass.CHANNEL_FAILURE, "no_access_token", f"channel {channel.name!r} has no access_token"
            )
        self._channel = channel
        self._session = session
        self._url = f"{channel.graph_base_url}/{channel.waba_id}/message_templates"
        self._headers = {"Authorization": f"Bearer {channel.access_token.get_secret_value()}"}

    async def submit(self, definition: TemplateDefinition, known_id: str | None) -> Submission:
        # Meta refuses a second template of one name and language, so creating is safe to repeat;
        # an earlier submission (known_id) is simply found again by name and language.
        if known_id is not None:
            existing = await self.find(definition.name, definition.language)
            if existing is not None:
                return Submission(existing, created=False)
        answer = await post(
            self._session,
            self._url,
            body=orjson.dumps(meta_template_request(await self._with_media_handle(definition))),
            content_type="application/json",
            headers=self._headers,
        )
        if answer.ok:
            data = json_object(answer, "the Graph API")
            template_id = data.get("id")
            if not isinstance(template_id, str | int) or not str(template_id):
                raise ProviderError(
                    ErrorClass.RETRY_LATER, "malformed_response", "Meta created the template but sent no id"
                )
            remote = RemoteTemplate(
                provider_template_id=str(template_id),
                name=definition.name,
                language=definition.language,
                status=str(data.get("status") or PENDING).upper(),
                category=str(data.get("category") or definition.category.value),
                definition=definition,
                raw=data,
            )
            return Submission(remote, created=True)
        error = meta_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
        if error.error_class is ErrorClass.BAD_REQUEST:
            existing = await self.find(definition.name, definition.language)
            if existing is not None:
                return Submission(existing, created=False)
        raise error

    async def _with_media_handle(self, definition: TemplateDefinition) -> TemplateDefinition:
        """``definition`` with an upload handle for its media header, uploading the example if need be."""
        header = definition.header
        if not isinstance(header, MediaHeader) or header.meta_handle:
            return definition
        if not self._channel.app_id or not header.url:
            missing = "app_id on the channel" if header.url else "header.url (the example media)"
            raise ProviderError(
                ErrorClass.BAD_REQUEST,
                "missing_media_handle",
                f"template {definition.key}: Meta reviews {header.type} headers from an uploaded example; "
                f"give header.meta_handle, or {missing} so that leadline uploads it",
            )
        media = await fetch_example_media(self._session, header.url, header.type)
        handle = await upload_example_media(self._session, self._channel, media)
        return definition.model_copy(update={"header": header.model_copy(update={"meta_handle": handle})})

    async def find(self, name: str, language: str) -> RemoteTemplate | None:
        for remote in await self._list({"name": name}):
            if remote.name == name and remote.language == language:
                return remote
        return None

    async def list_templates(self) -> list[RemoteTemplate]:
        return await self._list({})

    async def _list(self, filters: Mapping[str, str]) -> list[RemoteTemplate]:
        templates: list[RemoteTemplate] = []
        url: str | None = self._url
        params: Mapping[str, str] | None = {"fields": LIST_FIELDS, "limit": _PAGE_SIZE, **filters}
        for _ in range(_MAX_PAGES):
            if url is None:
                break
            answer = await get(self._session, url, params=params, headers=self._headers)
            if not answer.ok:
                raise meta_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
            data = json_object(answer, "the Graph API")
            items = data.get("data")
            for item in items if isinstance(items, list) else []:
                remote = remote_from_meta(item)
                if remote is not None:
                    templates.append(remote)
            paging = data.get("paging")
            next_url = paging.get("next") if isinstance(paging, dict) else None
            # ``next`` carries every parameter of the query already.
            url, params = (next_url, None) if isinstance(next_url, str) and next_url else (None, None)
        return templates


# --------------------------------------------------------------------------------------------
# Definition → Graph


def meta_template_request(definition: TemplateDefinition) -> dict[str, Any]:
    """The body of ``POST /{waba-id}/message_templates``."""
    if definition.is_authentication:
        return _authentication_request(definition)
    named = is_named(definition)
    components: list[dict[str, Any]] = []
    if definition.header is not None:
        components.append(_header_component(definition, named))
    body: dict[str, Any] = {"type": "BODY", "text": definition.body.text}
    body_slots = [s for s in variable_slots(definition) if s.component == "body"]
    if body_slots:
        if named:
            body["example"] = {
                "body_text_named_params": [{"param_name": s.name, "example": s.example or ""} for s in body_slots]
            }
        else:
            body["example"] = {"body_text": [[s.example or "" for s in body_slots]]}
    components.append(body)
    if definition.footer:
        components.append({"type": "FOOTER", "text": definition.footer})
    if definition.buttons:
        components.append({"type": "BUTTONS", "buttons": [_button(b) for b in definition.buttons]})
    request: dict[str, Any] = {
        "name": definition.name,
        "language": definition.language,
        "category": definition.category.value,
    }
    if named:
        request["parameter_format"] = "NAMED"
    request["components"] = components
    return request


def _authentication_request(definition: TemplateDefinition) -> dict[str, Any]:
    components: list[dict[str, Any]] = [
        {"type": "BODY", "add_security_recommendation": bool(definition.security_recommendation)}
    ]
    if definition.code_expiration_minutes is not None:
        components.append({"type": "FOOTER", "code_expiration_minutes": definition.code_expiration_minutes})
    components.append(
        {"type": "BUTTONS", "buttons": [_otp_button(b) for b in definition.buttons if isinstance(b, OtpButton)]}
    )
    return {
        "name": definition.name,
        "language": definition.language,
        "category": definition.category.value,
        "components": components,
    }


def _otp_button(button: OtpButton) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "OTP", "otp_type": button.otp_type.upper(), "text": button.text}
    if button.otp_type == "one_tap":
        if button.autofill_text is not None:
            result["autofill_text"] = button.autofill_text
        result["package_name"] = button.package_name
        result["signature_hash"] = button.signature_hash
    return result


def _header_component(definition: TemplateDefinition, named: bool) -> dict[str, Any]:
    header = definition.header
    if isinstance(header, MediaHeader):
        if not header.meta_handle:
            raise ProviderError(
                ErrorClass.BAD_REQUEST,
                "missing_media_handle",
                f"template {definition.key}: Meta needs header.meta_handle (an upload handle) for a media header",
            )
        return {"type": "HEADER", "format": header.type.upper(), "example": {"header_handle": [header.meta_handle]}}
    assert isinstance(header, TextHeader)
    component: dict[str, Any] = {"type": "HEADER", "format": "TEXT", "text": header.text}
    names = variables_in(header.text)
    if names:
        if named:
            component["example"] = {"header_text_named_params": [{"param_name": names[0], "example": header.example}]}
        else:
            component["example"] = {"header_text": [header.example]}
    return component


def _button(button: Button) -> dict[str, Any]:
    if isinstance(button, OtpButton):
        return _otp_button(button)
    if isinstance(button, QuickReplyButton):
        return {"type": "QUICK_REPLY", "text": button.text}
    if isinstance(button, PhoneButton):
        return {"type": "PHONE_NUMBER", "text": button.text, "phone_number": button.phone_number}
    result: dict[str, Any] = {"type": "URL", "text": button.text, "url": button.url}
    names = variables_in(button.url)
    if names:
        result["example"] = [substitute(button.url, {names[0]: button.example or ""})]
    return result


def meta_template_send(
    definition: TemplateDefinition, values: Mapping[str, str], provider_template_id: str | None
) -> TemplateSend:
    """The send of ``definition`` with ``values`` (one per slot key, already checked)."""
    if definition.is_authentication:
        code = values[variable_slots(definition)[0].key]
        return TemplateSend(
            name=definition.name,
            language=definition.language,
            body_parameters=(code,),
            buttons=({"sub_type": "url", "index": "0", "text": code},),
            provider_template_id=provider_template_id,
        )
    slots = variable_slots(definition)
    named = is_named(definition)
    body = [s for s in slots if s.component == "body"]
    header: dict[str, Any] | None = None
    for slot in slots:
        if slot.key != "header":
            continue
        if slot.media:
            header = {"type": slot.name, "link": values[slot.key]}
        else:
            header = {"type": "text", "text": values[slot.key]}
            if named:
                header["parameter_name"] = slot.name
    buttons = [
        {"sub_type": "url", "index": str(s.button_index), "text": values[s.key]}
        for s in slots
        if s.component == "button"
    ]
    return TemplateSend(
        name=definition.name,
        language=definition.language,
        body_parameters=() if named else tuple(values[s.key] for s in body),
        named_parameters={s.name: values[s.key] for s in body} if named else {},
        header=header,
        buttons=tuple(buttons),
        provider_template_id=provider_template_id,
    )


# --------------------------------------------------------------------------------------------
# Graph → definition


def remote_from_meta(item: Any) -> RemoteTemplate | None:
    """A listed template; None for an item without id, name or language."""
    if not isinstance(item, dict):
        return None
    template_id, name, language = item.get("id"), item.get("name"), item.get("language")
    if not (isinstance(template_id, str | int) and isinstance(name, str) and isinstance(language, str)):
        return None
    reason = item.get("rejected_reason")
    return RemoteTemplate(
        provider_template_id=str(template_id),
        name=name,
        language=language,
        status=str(item.get("status") or PENDING).upper(),
        category=item.get("category") if isinstance(item.get("category"), str) else None,
        rejection_reason=reason if isinstance(reason, str) and reason and reason != "NONE" else None,
        definition=definition_from_meta(item),
        raw=item,
    )


def definition_from_meta(item: Mapping[str, Any]) -> TemplateDefinition | None:
    """The definition of a template read from Meta; None when it uses a format leadline does not define
    (carousels, one-time-password or flow buttons...)."""
    data: dict[str, Any] = {
        "name": item.get("name"),
        "language": item.get("language"),
        "category": item.get("category"),
    }
    components = item.get("components")
    if not isinstance(components, list):
        return None
    try:
        for component in components:
            kind = str(component.get("type", "")).upper()
            example = component.get("example") or {}
            if kind == "HEADER":
                data["header"] = _header_from_meta(component, example)
            elif kind == "BODY":
                data["body"] = {"text": component.get("text", ""), "examples": _body_examples(component, example)}
            elif kind == "FOOTER":
                data["footer"] = component.get("text")
            elif kind == "BUTTONS":
                data["buttons"] = [_button_from_meta(b) for b in component.get("buttons", [])]
            else:
                return None
        return TemplateDefinition.model_validate(data)
    except (ValidationError, ValueError, AttributeError, TypeError, IndexError):
        return None


def _header_from_meta(component: Mapping[str, Any], example: Mapping[str, Any]) -> Header:
    header_format = str(component.get("format", "TEXT")).upper()
    if header_format == "TEXT":
        values = example.get("header_text") or [p.get("example") for p in example.get("header_text_named_params", [])]
        return TextHeader(text=component.get("text", ""), example=values[0] if values else None)
    if header_format in ("IMAGE", "VIDEO", "DOCUMENT"):
        handles = example.get("header_handle") or [None]
        return MediaHeader.model_validate({"type": header_format.lower(), "meta_handle": handles[0]})
    raise ValueError(f"header format {header_format}")


def _body_examples(component: Mapping[str, Any], example: Mapping[str, Any]) -> dict[str, str]:
    if example.get("body_text_named_params"):
        return {p["param_name"]: p["example"] for p in example["body_text_named_params"]}
    rows = example.get("body_text") or [[]]
    return {str(position): value for position, value in enumerate(rows[0], start=1)}


def _button_from_meta(button: Mapping[str, Any]) -> Button:
    kind = str(button.get("type", "")).upper()
    if kind == "QUICK_REPLY":
        return QuickReplyButton(text=button["text"])
    if kind == "PHONE_NUMBER":
        return PhoneButton(text=button["text"], phone_number=button["phone_number"])
    if kind == "URL":
        url = button["url"]
        examples = button.get("example") or []
        suffix = None
        if variables_in(url) and examples:
            prefix = url[: url.find("{{")]
            suffix = examples[0][len(prefix) :] if examples[0].startswith(prefix) else examples[0]
        return UrlButton(text=button["text"], url=url, example=suffix)
    raise ValueError(f"button type {kind}")


def parse_template_status_update(value: Mapping[str, Any]) -> TemplateStatusReport | None:
    """The ``value`` of a ``message_template_status_update`` change (A5); None when it names no status."""
    event = value.get("event")
    if not isinstance(event, str) or not event:
        return None
    template_id = value.get("message_template_id")
    info = value.get("rejection_info")
    reason = info.get("reason") if isinstance(info, dict) else None
    if not reason:
        reason = value.get("reason")
    name, language, category = (
        value.get("message_template_name"),
        value.get("message_template_language"),
        value.get("message_template_category"),
    )
    return TemplateStatusReport(
        status=event.upper(),
        provider_template_id=str(template_id) if isinstance(template_id, str | int) and template_id else None,
        name=name if isinstance(name, str) else None,
        language=language if isinstance(language, str) else None,
        rejection_reason=reason if isinstance(reason, str) and reason and reason != "NONE" else None,
        category=category if isinstance(category, str) else None,
    )
