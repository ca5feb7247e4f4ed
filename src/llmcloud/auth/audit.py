"""Audit events: who did what through which provider, with what outcome and why.

Each event is a row in `audit_events` and a line on the `llmcloud.audit`
logger. `reason` is a short code such as `state_mismatch`, never a token, a
code, a secret or a password.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa

from llmcloud.db.database import Database
from llmcloud.db.models import AuditEvent, Outcome

audit_log = logging.getLogger("llmcloud.audit")

LOGIN = "login"
LINK = "link"
UNLINK = "unlink"
ROLE_CHANGE = "role_change"


def record_event(
    db: Database,
    action: str,
    outcome: Outcome,
    *,
    provider: str | None = None,
    user_id: int | None = None,
    reason: str | None = None,
    subject: str | None = None,
) -> None:
    """Store an audit event and write it to the `llmcloud.audit` log.

    `subject` (the provider's user id) goes only to the log line, because the
    table has no column for it.
    """
    with db.transaction() as session:
        session.add(
            AuditEvent(
                action=action,
                outcome=outcome,
                provider=provider,
                actor_user_id=user_id,
                reason=reason,
            )
        )
    level = logging.INFO if outcome == Outcome.SUCCESS else logging.WARNING
    audit_log.log(
        level,
        "%s %s provider=%s user=%s subject=%s reason=%s",
        action,
        outcome.value,
        provider or "-",
        user_id if user_id is not None else "-",
        subject or "-",
        reason or "-",
    )


def list_events(db: Database, *, limit: int = 100) -> Sequence[AuditEvent]:
    """Return the newest audit events first."""
    query = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    with db.session() as session:
        return session.scalars(query).all()
