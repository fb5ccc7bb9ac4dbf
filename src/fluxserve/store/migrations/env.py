"""Alembic environment: runs on the connection fluxserve hands over (never from a URL)."""

from __future__ import annotations

from alembic import context

from fluxserve.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
)
with context.begin_transaction():
    context.run_migrations()
