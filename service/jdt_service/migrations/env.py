"""Alembic environment: migrations run on the connection :func:`jdt_service.db.upgrade` passes."""

from __future__ import annotations

from alembic import context

from jdt_service.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
