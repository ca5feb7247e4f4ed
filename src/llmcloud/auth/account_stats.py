"""Counts of accounts, for pages that change with the number of accounts."""

from __future__ import annotations

import sqlalchemy as sa

from llmcloud.db.database import Database
from llmcloud.db.models import User, UserSession, utcnow


def count_accounts(db: Database) -> int:
    """Return how many accounts exist, in any role or state."""
    with db.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(User)) or 0


def count_accounts_by_role(db: Database) -> dict[str, int]:
    """Return the number of accounts per role, deactivated ones included."""
    query = sa.select(User.role, sa.func.count()).group_by(User.role)
    with db.session() as session:
        return {role.value: count for role, count in session.execute(query)}


def count_active_sessions(db: Database) -> int:
    """Return how many login sessions have not expired."""
    query = sa.select(sa.func.count()).where(UserSession.expires_at > utcnow())
    with db.session() as session:
        return session.scalar(query.select_from(UserSession)) or 0
