"""A readiness check of the database, for `/readyz`."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from llmcloud.db.database import Database

log = logging.getLogger("llmcloud.db")


def database_problem(db: Database) -> str | None:
    """Run `SELECT 1` and return None when it works, else the error in one line."""
    try:
        with db.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("database %s is not reachable: %s", db.safe_url, exc)
        return f"database {db.safe_url} is not reachable: {type(exc).__name__}"
    return None
