"""Server-side login sessions for the web UI.

The cookie carries a random token of 32 bytes (43 URL-safe base64
characters). The database stores only its SHA-256, so a copy of the
database contains no usable cookie. Because sessions live in the database,
a restart of the web app does not log anyone out. Each session also has a
CSRF token that pages put into their forms and that `check_csrf()` compares
in constant time.

A session expires `idle_timeout` after its last request, and in any case
`max_age` after log-in. To avoid a database write on every request,
`last_seen_at` and the sliding expiry move forward at most once a minute.
Sessions of pending or deactivated accounts are neither created nor
honoured; deactivating an account also deletes its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from llmcloud.auth.accounts import check_can_log_in
from llmcloud.auth.errors import CsrfFailed, NotFound, SessionExpired
from llmcloud.db.database import Database
from llmcloud.db.models import User, UserSession, utcnow
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.auth")

TOKEN_BYTES = 32
TOUCH_INTERVAL = timedelta(seconds=60)
MAX_USER_AGENT_LENGTH = 200
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
_EXPIRED = "session expired or logged out; log in again"


@dataclass(frozen=True)
class SessionPolicy:
    idle_timeout: timedelta
    max_age: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionPolicy:
        return cls(
            idle_timeout=timedelta(seconds=settings.session_idle_timeout_seconds),
            max_age=timedelta(seconds=settings.session_max_age_seconds),
        )


@dataclass(frozen=True)
class NewSession:
    """A session just created. `token` goes into the cookie and is stored nowhere."""

    token: str
    csrf_token: str
    user_id: int
    expires_at: datetime


@dataclass(frozen=True)
class ActiveSession:
    """The session behind a request's cookie, with its (detached) account."""

    user: User
    csrf_token: str
    created_at: datetime
    expires_at: datetime


def create_session(
    db: Database,
    user_id: int,
    *,
    policy: SessionPolicy,
    user_agent: str | None = None,
    now: datetime | None = None,
) -> NewSession:
    """Log an account in: store a new session and return its token.

    Raises AccountPending or AccountDeactivated for an account that may not
    log in, and NotFound for an unknown account.
    """
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    csrf_token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = now + min(policy.idle_timeout, policy.max_age)

    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"account {user_id} not found")
        check_can_log_in(user)
        session.add(
            UserSession(
                token_hash=hash_token(token),
                user_id=user_id,
                created_at=now,
                last_seen_at=now,
                expires_at=expires_at,
                csrf_token=csrf_token,
                user_agent=(user_agent or "")[:MAX_USER_AGENT_LENGTH] or None,
            )
        )
    log.info("session created for account %s", user_id)
    return NewSession(token=token, csrf_token=csrf_token, user_id=user_id, expires_at=expires_at)


def lookup_session(
    db: Database, token: str | None, *, policy: SessionPolicy, now: datetime | None = None
) -> ActiveSession:
    """Return the live session for a cookie token and move its expiry forward.

    Raises SessionExpired for a missing, malformed, unknown, logged-out or
    expired token, and AccountPending or AccountDeactivated when the account
    lost the right to log in.
    """
    now = now or utcnow()
    if token is None or not _TOKEN_SHAPE.fullmatch(token):
        raise SessionExpired(_EXPIRED)
    token_hash = hash_token(token)

    query = (
        sa.select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.token_hash == token_hash)
    )
    with db.session() as session:
        row = session.execute(query).one_or_none()
    if row is None:
        raise SessionExpired(_EXPIRED)
    stored, user = row
    if stored.expires_at <= now:
        _delete_by_hash(db, token_hash)
        raise SessionExpired(_EXPIRED)
    check_can_log_in(user)

    expires_at = stored.expires_at
    if now - stored.last_seen_at >= TOUCH_INTERVAL:
        expires_at = min(now + policy.idle_timeout, stored.created_at + policy.max_age)
        _touch(db, token_hash, now, expires_at)
    return ActiveSession(
        user=user, csrf_token=stored.csrf_token, created_at=stored.created_at, expires_at=expires_at
    )


def delete_session(db: Database, token: str) -> None:
    """Log out: delete the session of this token. Unknown tokens are ignored."""
    _delete_by_hash(db, hash_token(token))


def delete_user_sessions(db: Database, user_id: int) -> int:
    """Log an account out everywhere; return how many sessions were deleted."""
    deleted = _delete_where(db, UserSession.user_id == user_id)
    log.info("deleted %s sessions of account %s", deleted, user_id)
    return deleted


def purge_expired_sessions(db: Database, *, now: datetime | None = None) -> int:
    """Delete every expired session and return how many there were."""
    now = now or utcnow()
    deleted = _delete_where(db, UserSession.expires_at <= now)
    if deleted:
        log.info("purged %s expired sessions", deleted)
    return deleted


def check_csrf(active: ActiveSession, submitted: str | None) -> None:
    """Raise CsrfFailed unless `submitted` equals the session's CSRF token."""
    if not submitted:
        raise CsrfFailed("missing CSRF token; reload the page and submit the form again")
    if not hmac.compare_digest(submitted.encode(), active.csrf_token.encode()):
        raise CsrfFailed("invalid CSRF token; reload the page and submit the form again")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _touch(db: Database, token_hash: str, now: datetime, expires_at: datetime) -> None:
    update = (
        sa.update(UserSession)
        .where(UserSession.token_hash == token_hash)
        .values(last_seen_at=now, expires_at=expires_at)
    )
    with db.transaction() as session:
        session.execute(update)


def _delete_by_hash(db: Database, token_hash: str) -> None:
    _delete_where(db, UserSession.token_hash == token_hash)


def _delete_where(db: Database, condition: sa.ColumnElement[bool]) -> int:
    with db.transaction() as session:
        result = session.execute(sa.delete(UserSession).where(condition))
    return cast("sa.CursorResult[Any]", result).rowcount
