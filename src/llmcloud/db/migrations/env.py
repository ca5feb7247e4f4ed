"""Alembic environment for llmcloud's schema.

`llmcloud.db.Database.upgrade()` runs the migrations inside its own
transaction and hands Alembic that connection, so no alembic.ini is read at
run time. Revisions in versions/ are written by hand as `NNNN_<slug>.py`, and
tests/db/test_database.py fails when they no longer match the models.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from llmcloud.db.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "llmcloud migrations run through llmcloud.db.Database.upgrade(), "
        "which passes an open connection; the alembic command alone is not supported"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
