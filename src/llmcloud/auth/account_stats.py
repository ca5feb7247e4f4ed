"""Counts of accounts, for pages that change with the number of accounts."""

from __future__ import annotations

import sqlalchemy as sa

from llmcloud.db.database import Database
from llmcloud.db.models import User


def count_accounts(db: Database) -> int:
    """Return how many accounts exist, in any role or state."""
    with db.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(User)) or 0
