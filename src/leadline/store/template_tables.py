"""The template library's tables, on the shared ``metadata`` so that one migration history covers them.

- one template per (name, language): ``templates`` is unique on both;
- one mapping per template and channel: ``template_channels`` is unique on (template_id, channel).
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, ForeignKey, String, Table, Text, UniqueConstraint

from leadline.store.tables import Serial, UTCDateTime, metadata

templates = Table(
    "templates",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("name", String(512), nullable=False),
    Column("language", String(16), nullable=False),
    Column("category", String(16), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    # ``file:<path>``, ``api``, or ``import:<channel>`` for one found on a provider.
    Column("source", String(300), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("name", "language"),
)

# A template's life on one channel. ``definition`` is what was submitted there, so sends render the
# version the provider approved even after the file has changed; ``status_at`` orders status reports,
# so a late webhook does not undo what a newer sync saw.
template_channels = Table(
    "template_channels",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("template_id", Serial, ForeignKey("templates.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_template_id", String(128)),
    Column("provider_name", String(512)),
    Column("status", String(32), nullable=False),
    Column("rejection_reason", Text),
    Column("category", String(16)),
    Column("definition", JSON),
    Column("fingerprint", String(64)),
    Column("submitted_at", UTCDateTime),
    Column("synced_at", UTCDateTime),
    Column("status_at", UTCDateTime, nullable=False),
    UniqueConstraint("template_id", "channel"),
)
