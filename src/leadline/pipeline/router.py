"""The router: configured rules pick the handlers an inbound message goes to.

Matching is pure and runs inside the transaction that records the message; each selected handler
becomes a durable job, so a handler that raises is retried without the provider redelivering anything.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

from leadline.config import HandlerCall, RouterRule
from leadline.domain.messages import InboundMessage


@dataclass(frozen=True, slots=True)
class SelectedHandler:
    rule: str
    position: int
    call: HandlerCall


def _rule_matches(rule: RouterRule, message: InboundMessage, is_new_lead: bool) -> bool:
    when = rule.when
    if when.channel is not None and message.channel not in when.channel:
        return False
    if when.kind is not None and message.kind.value not in when.kind:
        return False
    if when.lead is not None and (when.lead == "new") != is_new_lead:
        return False
    text = message.text or ""
    if when.keyword is not None and not any(_contains_word(text, word) for word in when.keyword):
        return False
    return not (when.regex is not None and not _compiled(when.regex).search(text))


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _contains_word(text: str, word: str) -> bool:
    return _compiled(rf"(?<!\w){re.escape(word)}(?!\w)").search(text) is not None


def select_handlers(rules: Sequence[RouterRule], message: InboundMessage, is_new_lead: bool) -> list[SelectedHandler]:
    selected: list[SelectedHandler] = []
    for rule in rules:
        if not _rule_matches(rule, message, is_new_lead):
            continue
        selected.extend(SelectedHandler(rule.name, i, call) for i, call in enumerate(rule.then))
        if rule.stop:
            break
    return selected


class HandlerContext(Protocol):
    """What a handler may read and do. Actions are idempotent, since a retried job runs them again."""

    lead_id: str
    message: dict[str, Any]
    """The inbound message as stored: ``id``, ``channel``, ``kind``, ``text``, ``content``..."""

    async def tag(self, tag: str) -> None: ...

    async def assign_owner(self, owner: str) -> None: ...

    async def add_note(self, text: str) -> None: ...

    async def forward_to_crm(self, subscriber: str) -> None: ...


Handler = Callable[..., Awaitable[None]]


async def tag(ctx: HandlerContext, *, tag: str) -> None:
    await ctx.tag(tag)


async def assign_owner(ctx: HandlerContext, *, owner: str) -> None:
    await ctx.assign_owner(owner)


async def add_note(ctx: HandlerContext, *, text: str) -> None:
    await ctx.add_note(text)


async def forward_to_crm(ctx: HandlerContext, *, subscriber: str) -> None:
    """Send this message to a CRM subscriber (one configured with ``all_events = false``)."""
    await ctx.forward_to_crm(subscriber)


BUILTIN_HANDLERS: dict[str, Handler] = {
    "tag": tag,
    "assign_owner": assign_owner,
    "add_note": add_note,
    "forward_to_crm": forward_to_crm,
}


class UnknownHandler(LookupError):
    pass


@cache
def resolve_handler(name: str) -> Handler:
    """A built-in, a ``package.module:function`` path, or a ``leadline.handlers`` entry point."""
    if name in BUILTIN_HANDLERS:
        return BUILTIN_HANDLERS[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            handler: Any = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise UnknownHandler(f"cannot import handler {name!r}: {exc}") from exc
        return handler  # type: ignore[no-any-return]
    for entry in entry_points(group="leadline.handlers", name=name):
        loaded: Handler = entry.load()
        return loaded
    raise UnknownHandler(f"no handler named {name!r} (built-ins: {', '.join(BUILTIN_HANDLERS)})")
