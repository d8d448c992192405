"""Router rules as pure matching: which handlers a message selects, with no database or HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from leadline.config import RouterRule
from leadline.domain.messages import InboundMessage, MessageId, MessageKind
from leadline.pipeline.router import select_handlers


def rule(name: str, when: dict[str, Any] | None = None, *, stop: bool = False, handler: str = "tag") -> RouterRule:
    return RouterRule.model_validate(
        {"name": name, "when": when or {}, "then": [{"handler": handler, "args": {"tag": name}}], "stop": stop}
    )


def message(
    text: str | None = "hola", *, kind: MessageKind = MessageKind.TEXT, channel: str = "meta-main"
) -> InboundMessage:
    return InboundMessage(
        provider="meta",
        channel=channel,
        provider_message_id=MessageId("wamid.1"),
        sender="+5215512345678",
        business_number="+15550001234",
        kind=kind,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        text=text,
    )


def chosen(rules: list[RouterRule], msg: InboundMessage, *, new_lead: bool = False) -> list[str]:
    return [selected.rule for selected in select_handlers(rules, msg, new_lead)]


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("¿Cuál es el precio?", True),
        ("PRECIO por favor", True),
        ("price?", True),
        ("precios", False),
        ("priced", False),
        ("sin precio-", True),
        ("", False),
        (None, False),
    ],
)
def test_keyword_matches_whole_words_in_any_case(text: str | None, matches: bool) -> None:
    rules = [rule("pricing", {"keyword": ["precio", "price"]})]
    assert chosen(rules, message(text)) == (["pricing"] if matches else [])


def test_keyword_with_regex_characters_is_matched_literally() -> None:
    rules = [rule("plus", {"keyword": "c++"})]
    assert chosen(rules, message("I code in c++ daily")) == ["plus"]
    assert chosen(rules, message("I code in cxx daily")) == []


def test_regex_is_searched_case_insensitively() -> None:
    rules = [rule("order", {"regex": r"pedido\s+#?\d{4,}"})]
    assert chosen(rules, message("Mi PEDIDO #12345")) == ["order"]
    assert chosen(rules, message("pedido 12")) == []


def test_channel_and_kind_conditions() -> None:
    rules = [rule("twilio-images", {"channel": "twilio-main", "kind": ["image", "video"]})]
    assert chosen(rules, message(kind=MessageKind.IMAGE, channel="twilio-main")) == ["twilio-images"]
    assert chosen(rules, message(kind=MessageKind.IMAGE, channel="meta-main")) == []
    assert chosen(rules, message(kind=MessageKind.TEXT, channel="twilio-main")) == []


def test_lead_condition_tells_new_from_returning() -> None:
    rules = [rule("welcome", {"lead": "new"}), rule("again", {"lead": "returning"})]
    assert chosen(rules, message(), new_lead=True) == ["welcome"]
    assert chosen(rules, message(), new_lead=False) == ["again"]


def test_all_conditions_of_a_rule_must_hold() -> None:
    rules = [rule("both", {"keyword": "precio", "lead": "new"})]
    assert chosen(rules, message("precio"), new_lead=False) == []
    assert chosen(rules, message("hola"), new_lead=True) == []
    assert chosen(rules, message("precio"), new_lead=True) == ["both"]


def test_rule_without_conditions_matches_everything() -> None:
    assert chosen([rule("all")], message(None, kind=MessageKind.STICKER)) == ["all"]


def test_every_matching_rule_runs_in_order_until_one_says_stop() -> None:
    rules = [rule("first"), rule("second", stop=True), rule("third")]
    assert chosen(rules, message()) == ["first", "second"]


def test_each_handler_of_a_rule_is_selected_with_its_position() -> None:
    two = RouterRule.model_validate(
        {
            "name": "two",
            "then": [{"handler": "tag", "args": {"tag": "a"}}, {"handler": "add_note", "args": {"text": "b"}}],
        }
    )
    selected = select_handlers([two], message(), False)
    assert [(s.rule, s.position, s.call.handler) for s in selected] == [("two", 0, "tag"), ("two", 1, "add_note")]
