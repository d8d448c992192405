"""WhatsApp's customer-service window: free-form messages only within 24 hours of the customer's last one."""

from __future__ import annotations

from datetime import datetime, timedelta

WINDOW = timedelta(hours=24)


def window_is_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Our own sends, templates included, never extend the window; only the customer's messages do."""
    return last_inbound_at is not None and now - last_inbound_at < WINDOW


def window_closes_at(last_inbound_at: datetime) -> datetime:
    return last_inbound_at + WINDOW
