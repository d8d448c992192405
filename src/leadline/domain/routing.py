"""Which channel an outbound message goes through, and why. Pure: the caller gathers the facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from leadline.domain.window import window_is_open


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    channel: str
    reason: str


class NoRoute(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def decide_channel(
    *,
    sendable: Sequence[str],
    explicit: str | None,
    last_inbound_by_channel: Mapping[str, datetime],
    default_channel: str | None,
    now: datetime,
) -> RoutingDecision:
    """Explicit channel, else the channel of the thread in flight, else the default.

    ``sendable`` lists the channels that can send, in configuration order.
    """
    if explicit is not None:
        if explicit not in sendable:
            raise NoRoute("unknown_channel", f"no channel {explicit!r} that can send")
        return RoutingDecision(explicit, "requested")
    open_threads = [
        (at, channel)
        for channel, at in last_inbound_by_channel.items()
        if channel in sendable and window_is_open(at, now)
    ]
    if open_threads:
        _, channel = max(open_threads)
        return RoutingDecision(channel, "thread_in_flight")
    if default_channel is not None and default_channel in sendable:
        return RoutingDecision(default_channel, "default_channel")
    if sendable:
        return RoutingDecision(sendable[0], "first_channel")
    raise NoRoute("no_channel", "no channel is configured to send (give one an access token or auth token)")
