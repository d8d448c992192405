"""template library: templates and their per-channel approval

Revision ID: 0002_templates
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import leadline.store.tables

revision = "0002_templates"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("created_at", leadline.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", leadline.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("name", "language", name=op.f("uq_templates_name_language")),
    )
    op.create_table(
        "template_channels",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("template_id", _ID, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_template_id", sa.String(length=128), nullable=True),
        sa.Column("provider_name", sa.String(length=512), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("rejection_reason", sa.Text(), nullable=True),
        sa.Column("category", sa.String(length=16), nullable=True),
        sa.Column("definition", sa.JSON(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("submitted_at", leadline.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("synced_at", leadline.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status_at", leadline.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name=op.f("fk_template_channels_template_id_templates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_template_channels")),
        sa.UniqueConstraint("template_id", "channel", name=op.f("uq_template_channels_template_id_channel")),
    )


def downgrade() -> None:
    op.drop_table("template_channels")
    op.drop_table("templates")
