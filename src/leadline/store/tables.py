"""The schema. Every rule that protects data is a constraint here, so it holds across processes:

- one lead per person: ``lead_identities`` is unique on (kind, value);
- one message per provider message id: ``messages`` is unique on (provider, provider_message_id);
- one timeline entry per fact: ``timeline_events.dedupe_key`` is unique;
- one status report counted once: ``message_statuses`` is unique on (provider, provider_message_id, status);
- one job per cause: ``jobs.dedupe_key`` is unique.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite's INTEGER PRIMARY KEY must be spelled INTEGER to be the rowid alias; PostgreSQL wants BIGINT.
Serial = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, whatever the backend keeps (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware ones")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


leads = Table(
    "leads",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("phone", String(20)),  # None while WhatsApp withholds the customer's number (lead_identities know them)
    Column("display_name", Text),
    Column("owner", Text),
    Column("tags", JSON, nullable=False, default=list),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_inbound_at", UTCDateTime),
    Column("last_inbound_channel", String(64)),
)

lead_identities = Table(
    "lead_identities",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("lead_id", String(40), ForeignKey("leads.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("value", String(128), nullable=False),
    UniqueConstraint("kind", "value"),
)

# The customer-service window, per lead and channel: opened by each customer message.
conversation_windows = Table(
    "conversation_windows",
    metadata,
    Column("lead_id", String(40), ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True),
    Column("channel", String(64), primary_key=True),
    Column("last_inbound_at", UTCDateTime, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("lead_id", String(40), ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_message_id", String(128)),
    Column("kind", String(32), nullable=False),
    Column("text", Text),
    # The normalised message (media, location, reply choice, referral...), provider-neutral.
    Column("content", JSON, nullable=False),
    Column("raw", JSON),
    Column("status", String(16)),
    Column("status_rank", Integer, nullable=False, default=0),
    Column("error_code", String(32)),
    Column("error_title", Text),
    Column("idempotency_key", String(128)),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("provider", "provider_message_id"),
    UniqueConstraint("idempotency_key"),
    Index("ix_messages_lead_created", "lead_id", "created_at"),
    # Held messages are listed, counted for /metrics and released by channel: few rows, read often.
    Index(
        "ix_messages_held",
        "channel",
        "created_at",
        sqlite_where=text("status = 'held'"),
        postgresql_where=text("status = 'held'"),
    ),
)

message_statuses = Table(
    "message_statuses",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("provider_message_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("error_code", String(32)),
    Column("error_title", Text),
    Column("error_detail", Text),
    Column("raw", JSON),
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("provider", "provider_message_id", "status"),
)

timeline_events = Table(
    "timeline_events",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("lead_id", String(40), ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message_id", String(40)),
    Column("channel", String(64)),
    Column("summary", Text),
    Column("data", JSON, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("dedupe_key", String(200), nullable=False),
    UniqueConstraint("dedupe_key"),
    Index("ix_timeline_events_lead_order", "lead_id", "id"),
)

# Webhook items that are not messages or statuses (template status, account and quality updates),
# kept for the handlers that own them.
provider_notices = Table(
    "provider_notices",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("channel", String(64)),
    Column("topic", String(64), nullable=False),
    Column("account_id", String(64)),
    Column("payload", JSON, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("dedupe_key", String(200), nullable=False),
    UniqueConstraint("dedupe_key"),
)

# The durable job table: router dispatch, outbound sends, callbacks. Claimed with a lease so a dead
# worker's job is taken up again; ``order_key`` keeps one lead's jobs in order.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("order_key", String(80)),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("run_after", UTCDateTime, nullable=False),
    Column("locked_until", UTCDateTime),
    Column("locked_by", String(64)),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("dedupe_key", String(200)),
    UniqueConstraint("dedupe_key"),
    Index("ix_jobs_claim", "state", "run_after"),
    Index("ix_jobs_order", "order_key", "id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("key_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    UniqueConstraint("key_sha256"),
)

# Per channel counters of rejected webhooks, so a wrong secret shows up in the database, the CLI and
# the metrics instead of as silently missing leads.
webhook_rejections = Table(
    "webhook_rejections",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("channel", String(64)),
    Column("code", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
)

# CRM subscribers named in the configuration (their URLs and secrets stay in the configuration): every new
# timeline event becomes one callback job per subscriber, in the event's own transaction.
crm_subscribers = Table(
    "crm_subscribers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("all_events", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# What the send path has seen of each channel: the circuit breaker of the routing policy reads it.
channel_health = Table(
    "channel_health",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_error_code", String(32)),
    Column("last_error_message", Text),
    Column("last_failure_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("opened_at", UTCDateTime),
    Column("next_probe_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Inbound media fetched from the provider and kept by leadline, served at /v1/media/{id}.
media_files = Table(
    "media_files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("message_id", String(40), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("provider_ref", Text, nullable=False),
    Column("mime_type", String(128)),
    Column("filename", Text),
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("storage_key", Text),
    Column("state", String(12), nullable=False),
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("stored_at", UTCDateTime),
    UniqueConstraint("message_id", "position"),
)

# Routing flags, read by every process on every decision (so a change is in force at once everywhere).
routing_overrides = Table(
    "routing_overrides",
    metadata,
    # An exact E.164 number or a prefix such as ``+34``.
    Column("match", String(20), primary_key=True),
    Column("channel", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# One row (id = 1): the rollout, the default channel and the cutover in progress.
routing_state = Table(
    "routing_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("default_channel", String(64)),
    Column("rollout_channel", String(64)),
    Column("rollout_percent", Float, nullable=False, default=0.0),
    Column("cutover_from", String(64)),
    Column("cutover_to", String(64)),
    Column("cutover_started_at", UTCDateTime),
    Column("cutover_finished_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)

routing_audit = Table(
    "routing_audit",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("before", JSON),
    Column("after", JSON),
    Column("occurred_at", UTCDateTime, nullable=False),
)
