"""Alembic environment: leadline runs migrations on a connection it already holds (see store.db)."""

from __future__ import annotations

from alembic import context

import leadline.store.template_tables  # noqa: F401  (registers its tables on metadata)
from leadline.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `leadline migrate`, which provides the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
