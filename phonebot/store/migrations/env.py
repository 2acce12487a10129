"""Alembic's environment: migrate the connection `phonebot.store.migrate` hands over.

`migrate.upgrade()` opens an exclusive transaction and passes its connection in
`config.attributes["connection"]`, so the schema change and the version stamp commit together.
"""

from __future__ import annotations

from alembic import context

from phonebot.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `phonebot db upgrade` (phonebot.store.migrate.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
