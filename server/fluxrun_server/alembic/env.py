"""Alembic environment: migrations run on the connection the server hands over (see index.database)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from fluxrun_server.control import models as control_models  # noqa: F401  (the control-plane tables)
from fluxrun_server.index import models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the server runs migrations
    raise RuntimeError("run migrations through fluxrun_server.index.database.migrate()")
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
