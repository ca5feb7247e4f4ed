"""Stop SQLite from reusing the ids of deleted accounts, messages, API keys and backends.

Without AUTOINCREMENT, SQLite gives a new row the largest id plus one, so
the id of the newest row comes back after that row is deleted. A page or
form that still names the deleted row would then act on the new one. Each
table is rebuilt with AUTOINCREMENT, keeping its rows and ids. PostgreSQL
sequences never reuse ids, so nothing changes there.

The rebuild drops the old table, so `Database.upgrade()` runs SQLite
migrations with foreign keys off: dropping `users` would otherwise delete
every row that references an account.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import logging
import warnings

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("llmcloud.db")

TABLES = ("users", "api_keys", "messages", "backends")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in TABLES:
        rows = bind.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
        if rows:
            log.info("rebuilding table %s (%d rows) so that its ids are never reused", table, rows)
        # Batch mode reflects the table, and SQLAlchemy cannot reflect the index on
        # lower(username); it is created again below.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Skipped unsupported reflection")
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
            ):
                pass
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)


def downgrade() -> None:
    # Tables with AUTOINCREMENT work as before for older code.
    pass
