"""The routing policy's flags, pure: which override a number matches and which rollout bucket it is in."""

from __future__ import annotations

import pytest

from leadline.domain.routing import matching_override, rollout_bucket

OVERRIDES = {"+52": "twilio-main", "+52155": "meta-second", "+5215512345678": "meta-main"}


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+5215512345678", ("meta-main", "number_override")),
        ("+525512345678", ("meta-main", "number_override")),  # the same Mexican mobile, spelled without the 1
        ("+5215599999999", ("meta-second", "prefix_override")),
        ("+5218112345678", ("twilio-main", "prefix_override")),
        ("+34600111222", None),
    ],
)
def test_exact_number_then_longest_prefix(number: str, expected: tuple[str, str] | None) -> None:
    assert matching_override(number, OVERRIDES) == expected


def test_an_exact_number_is_never_a_prefix_of_a_longer_number() -> None:
    assert matching_override("+155512345678", {"+15551234567": "twilio-main"}) is None


def test_rollout_bucket_is_the_same_for_every_spelling_of_one_persons_number() -> None:
    assert rollout_bucket("+5215512345678") == rollout_bucket("+525512345678")
    assert rollout_bucket("+5511987654321") == rollout_bucket("+551187654321")  # Brazil's ninth digit
    assert 0 <= rollout_bucket("+34600111222") < 100
