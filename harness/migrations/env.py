"""Alembic's environment: always run on a connection handed over by harness.migrations.upgrade."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("harness migrations run through harness.store.Store (harness.migrations.upgrade), "
                       "which passes the connection; there is no alembic.ini")
# The caller's connection is already inside a transaction: Alembic joins it rather than committing
# per step, so the upgrade and the caller's version checks commit together.
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
