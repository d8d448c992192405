"""a lead may be known by its WhatsApp user id alone, its number withheld; an index of held messages

Revision ID: 0004_leads_without_number
Revises: 0003_routing
Create Date: 2026-11-26 15:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_leads_without_number"
down_revision = "0003_routing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot alter a column in place: batch mode copies the table.
    with op.batch_alter_table("leads") as batch:
        batch.alter_column("phone", existing_type=sa.String(length=20), nullable=True)
    op.create_index(
        "ix_messages_held",
        "messages",
        ["channel", "created_at"],
        sqlite_where=sa.text("status = 'held'"),
        postgresql_where=sa.text("status = 'held'"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_held", table_name="messages")
    with op.batch_alter_table("leads") as batch:
        batch.alter_column("phone", existing_type=sa.String(length=20), nullable=False)
