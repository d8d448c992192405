"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WEBHOOK_REJECTIONS = Counter(
    "leadline_webhook_rejections_total",
    "Webhook requests refused (bad signature, malformed body, unknown channel...), per channel.",
    ["provider", "channel", "code"],
)
INBOUND_EVENTS = Counter(
    "leadline_inbound_events_total",
    "Webhook events accepted and committed, per channel and type.",
    ["provider", "channel", "type"],
)
WEBHOOK_ITEM_PROBLEMS = Counter(
    "leadline_webhook_item_problems_total",
    "Items inside an accepted webhook that could not be translated (the rest of the batch was kept).",
    ["provider", "channel"],
)
ROUTING_DECISIONS = Counter(
    "leadline_routing_decisions_total",
    "Outbound messages accepted, by the channel the routing policy chose and its reason.",
    ["channel", "reason"],
)
CIRCUIT_OPENINGS = Counter(
    "leadline_circuit_openings_total",
    "Times a channel's circuit opened (an account-level error, or failure_threshold outages in a row).",
    ["channel"],
)
CIRCUIT_CLOSINGS = Counter(
    "leadline_circuit_closings_total",
    "Times a channel's circuit closed again (a probe, or another send, was accepted).",
    ["channel"],
)
CIRCUIT_OPEN = Gauge(
    "leadline_channel_circuit_open",
    "1 while the channel's circuit is open (half-open included), 0 when closed; read from the database.",
    ["channel"],
)
HELD_MESSAGES = Gauge(
    "leadline_held_messages",
    "Outbound messages held because their channel is down and they could not move; read from the database.",
    ["channel"],
)
FAILOVERS = Counter(
    "leadline_failovers_total",
    "Queued messages moved off a channel whose circuit is open, by the channel they left and the one they took.",
    ["from", "to"],
)


# --------------------------------------------------------------------------------------------
# Counts made in another process (the writer processes, store.writer) reach this one's /metrics.

CountKey = tuple[str, tuple[tuple[str, str], ...]]


def _counters() -> dict[str, Counter]:
    return {
        family.name: metric
        for metric in globals().values()
        if isinstance(metric, Counter)
        for family in metric.describe()
    }


def counter_values() -> dict[CountKey, float]:
    """Every leadline counter's value, per label set."""
    values: dict[CountKey, float] = {}
    for name, counter in _counters().items():
        for family in counter.collect():
            for sample in family.samples:
                if sample.name == f"{name}_total":
                    values[(name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def counted_since(before: dict[CountKey, float]) -> tuple[dict[CountKey, float], list[tuple[CountKey, float]]]:
    """(the values now, what each counter gained since ``before``)."""
    now = counter_values()
    return now, [(key, value - before.get(key, 0.0)) for key, value in now.items() if value > before.get(key, 0.0)]


def add_counts(counts: list[tuple[CountKey, float]]) -> None:
    """Add counts made elsewhere to this process's counters."""
    counters = _counters()
    for (name, labels), amount in counts:
        counter = counters.get(name)
        if counter is not None:
            counter.labels(**dict(labels)).inc(amount)
