"""a lead may be known by its WhatsApp user id alone, its number withheld

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


def downgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.alter_column("phone", existing_type=sa.String(length=20), nullable=False)
