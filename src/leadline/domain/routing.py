"""The routing policy: which channel an outbound message goes through, and why. Pure: the caller gathers
the facts (routing.facts) and records the decision on the timeline.

In order:

1. an explicit channel in the request wins, if that channel is healthy;
2. a thread in flight stays where it is: the channel where the customer's window is open, or where the
   lead's last conversation is younger than the drain age, so threads drain on the old provider;
3. otherwise the flags: a per-number override (exact number, then the longest matching prefix), then the
   percentage rollout (by a hash of the number, so a number never flaps), then the default channel;
4. a template goes only where it is approved; any choice whose channel is down (circuit open) falls
   through to the next, and at the end to any healthy channel (failover).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from leadline.domain.phones import match_key
from leadline.domain.window import window_is_open


@dataclass(frozen=True, slots=True)
class ChannelState:
    name: str
    healthy: bool = True
    """False while the channel's circuit is open (payment, account locked, token expired, repeated 5xx)."""


@dataclass(frozen=True, slots=True)
class Flags:
    overrides: Mapping[str, str] = field(default_factory=dict)
    """Exact E.164 numbers and prefixes (``+34``) to a channel name."""
    rollout_channel: str | None = None
    rollout_percent: float = 0.0
    default_channel: str | None = None


@dataclass(frozen=True, slots=True)
class LeadThreads:
    last_inbound: Mapping[str, datetime] = field(default_factory=dict)
    """When the customer last wrote, per channel (the customer-service window)."""
    last_activity: Mapping[str, datetime] = field(default_factory=dict)
    """The lead's last message in either direction, per channel."""


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    channel: str
    reason: str
    """``requested``, ``thread_in_flight``, ``number_override``, ``prefix_override``, ``rollout``,
    ``default_channel``, ``first_channel`` or ``failover``."""
    passed_over: tuple[str, ...] = ()
    """What was not taken and why (``meta-main: circuit open``), for the timeline."""

    @property
    def is_failover(self) -> bool:
        return any("circuit open" in note for note in self.passed_over)


class NoRoute(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _notes(passed_over: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(passed_over))


MAX_PREFIX_LENGTH = 7
"""A prefix override is ``+`` and at most 6 digits; an E.164 number has at least 7 digits, so is longer."""


def rollout_bucket(number: str) -> float:
    """Where a number falls in [0, 100): stable across processes and releases, and across the spellings of
    one person's number (``+521…`` and ``+52…`` in Mexico), so the same lead never lands on both sides."""
    digest = hashlib.sha256(match_key(number).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


def matching_override(number: str, overrides: Mapping[str, str]) -> tuple[str, str] | None:
    """(channel, reason) for an exact override (any spelling of the number), else the longest matching
    prefix. An exact number is never used as a prefix of a longer one."""
    key = match_key(number)
    exact = [p for p in overrides if len(p) > MAX_PREFIX_LENGTH and match_key(p) == key]
    if exact:
        return overrides[number if number in exact else exact[0]], "number_override"
    prefixes = [p for p in overrides if len(p) <= MAX_PREFIX_LENGTH and number.startswith(p)]
    if prefixes:
        return overrides[max(prefixes, key=len)], "prefix_override"
    return None


def decide_channel(
    *,
    to: str,
    channels: Sequence[ChannelState],
    explicit: str | None,
    threads: LeadThreads,
    flags: Flags,
    drain_age: timedelta,
    now: datetime,
    approved: frozenset[str] | None = None,
) -> RoutingDecision:
    """``channels``: those that can send, in configuration order. ``approved``: for a template send, the
    channels where it is approved (None for free-form messages)."""
    by_name = {c.name: c for c in channels}
    passed_over: list[str] = []

    def usable(name: str) -> bool:
        state = by_name.get(name)
        if state is None:
            passed_over.append(f"{name}: cannot send")
            return False
        if not state.healthy:
            passed_over.append(f"{name}: circuit open")
            return False
        if approved is not None and name not in approved:
            passed_over.append(f"{name}: template not approved")
            return False
        return True

    if explicit is not None:
        if explicit not in by_name:
            raise NoRoute("unknown_channel", f"no channel {explicit!r} that can send")
        if usable(explicit):
            return RoutingDecision(explicit, "requested", _notes(passed_over))

    # The customer's own last message decides first (a reply never crosses to a channel they left), then
    # the channel of the lead's last conversation within the drain age.
    open_windows = sorted(
        ((at, name) for name, at in threads.last_inbound.items() if name in by_name and window_is_open(at, now)),
        reverse=True,
    )
    with_window = {name for _, name in open_windows}
    draining = sorted(
        (
            (at, name)
            for name, at in threads.last_activity.items()
            if name in by_name and name not in with_window and now - at < drain_age
        ),
        reverse=True,
    )
    in_flight = open_windows + draining
    for _, name in in_flight:
        if usable(name):
            return RoutingDecision(name, "thread_in_flight", _notes(passed_over))

    candidates: list[tuple[str | None, str]] = []
    override = matching_override(to, flags.overrides)
    if override is not None:
        candidates.append(override)
    if flags.rollout_channel is not None and rollout_bucket(to) < flags.rollout_percent:
        candidates.append((flags.rollout_channel, "rollout"))
    candidates.append((flags.default_channel, "default_channel"))
    for candidate, reason in candidates:
        if candidate is not None and usable(candidate):
            return RoutingDecision(candidate, reason, _notes(passed_over))

    for state in channels:
        if state.name not in {n for _, n in in_flight} and usable(state.name):
            reason = "failover" if any("circuit open" in p for p in passed_over) else "first_channel"
            return RoutingDecision(state.name, reason, _notes(passed_over))
    if not channels:
        raise NoRoute("no_channel", "no channel is configured to send (give one an access token or auth token)")
    if approved is not None and not (approved & set(by_name)):
        raise NoRoute("template_not_approved", "the template is not approved on any channel that can send")
    raise NoRoute("no_healthy_channel", "every channel that could take this message is down: " + "; ".join(passed_over))
