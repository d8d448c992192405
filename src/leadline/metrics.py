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
