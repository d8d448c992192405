"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter

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
