"""Storage: SQLAlchemy models, Alembic migrations and the chat repository.

`open_database(url)` returns a `Database`; `Database.upgrade()` brings the
schema to the newest revision. Other parts reach the tables only through
this package and `llmcloud.auth`.
"""

from __future__ import annotations

from llmcloud.db.database import (
    Database,
    database_url_from_settings,
    default_database_url,
    open_database,
)

__all__ = ["Database", "database_url_from_settings", "default_database_url", "open_database"]
