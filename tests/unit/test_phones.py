"""Phone numbers: every spelling providers use parses to one E.164, and one person has one match key."""

from __future__ import annotations

import pytest

from leadline.domain.phones import InvalidPhoneNumber, match_key, to_e164


@pytest.mark.parametrize(
    "spelling",
    [
        "+5215512345678",
        "5215512345678",
        "whatsapp:+5215512345678",
        "WhatsApp:+5215512345678",
        "tel:+5215512345678",
        " +52 1 55 1234-5678 ",
        "+52 (1) 55.1234.5678",
    ],
)
def test_provider_spellings_parse_to_one_e164(spelling: str) -> None:
    assert to_e164(spelling) == "+5215512345678"


@pytest.mark.parametrize(
    "text",
    ["", "hello", "+", "12", "+0001234567", "+1234567890123456", "+999123456789", "whatsapp:", "+52 55 1234 abcd"],
)
def test_text_that_is_no_international_number_is_refused(text: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        to_e164(text)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("+5511987654321", "+551187654321", id="brazil-ninth-digit"),
        pytest.param("+5215512345678", "+525512345678", id="mexico-legacy-1"),
        pytest.param("+5491112345678", "+541112345678", id="argentina-legacy-9"),
    ],
)
def test_spellings_of_one_person_share_a_match_key(one: str, other: str) -> None:
    assert match_key(one) == match_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("+5511987654321", "+5511887654321", id="brazil-different-numbers"),
        pytest.param("+447700900123", "+447700900124", id="uk-neighbours"),
        pytest.param("+15550001234", "+5215550001234", id="different-countries"),
        pytest.param("+5215512345678", "+525512345679", id="mexico-different-numbers"),
    ],
)
def test_different_people_keep_different_match_keys(one: str, other: str) -> None:
    assert match_key(one) != match_key(other)


def test_brazilian_landline_is_not_folded_into_a_mobile() -> None:
    assert match_key("+551133334444") != match_key("+5511933334444")


def test_numbers_without_a_legacy_prefix_are_their_own_key() -> None:
    for number in ["+447700900123", "+15550001234", "+4915112345678"]:
        assert match_key(number) == number
