from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from llmcloud.auth import accounts, sessions
from llmcloud.auth.errors import AccountPending, CsrfFailed, SessionExpired
from llmcloud.db import Database
from llmcloud.db.models import Role, User, UserSession, utcnow
from llmcloud.settings import Settings

POLICY = sessions.SessionPolicy(idle_timeout=timedelta(days=1), max_age=timedelta(days=3))
PASSWORD = "correct horse battery"


@pytest.fixture
def admin(database: Database, hasher: PasswordHasher) -> User:
    return accounts.sign_up(database, "root", PASSWORD, hasher=hasher)


@pytest.fixture
def alice(database: Database, hasher: PasswordHasher, admin: User) -> User:
    return accounts.sign_up(database, "alice", PASSWORD, signup_mode="open", hasher=hasher)


def _stored_sessions(database: Database) -> list[UserSession]:
    with database.session() as session:
        return list(session.scalars(sa.select(UserSession)).all())


def test_policy_from_settings_uses_seconds() -> None:
    settings = Settings(session_idle_timeout_seconds=600, session_max_age_seconds=3600)
    policy = sessions.SessionPolicy.from_settings(settings)
    assert policy == sessions.SessionPolicy(timedelta(minutes=10), timedelta(hours=1))


def test_lookup_session_returns_account(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    active = sessions.lookup_session(database, new.token, policy=POLICY)
    assert active.user.id == alice.id
    assert active.csrf_token == new.csrf_token


def test_create_session_stores_only_token_hash(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    (stored,) = _stored_sessions(database)
    assert stored.token_hash == sessions.hash_token(new.token)
    assert new.token not in (stored.token_hash, stored.csrf_token)


def test_create_session_token_has_32_random_bytes(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    assert len(new.token) == 43


def test_create_session_cuts_long_user_agent(database: Database, alice: User) -> None:
    sessions.create_session(database, alice.id, policy=POLICY, user_agent="x" * 500)
    (stored,) = _stored_sessions(database)
    assert stored.user_agent == "x" * 200


def test_create_session_rejects_pending_account(
    database: Database, hasher: PasswordHasher, admin: User
) -> None:
    pending = accounts.sign_up(database, "bob", PASSWORD, hasher=hasher)
    with pytest.raises(AccountPending):
        sessions.create_session(database, pending.id, policy=POLICY)
    assert _stored_sessions(database) == []


@pytest.mark.parametrize("token", [None, "", "short", "x" * 43, "!" * 43])
def test_lookup_session_rejects_unknown_token(database: Database, token: str | None) -> None:
    with pytest.raises(SessionExpired) as error:
        sessions.lookup_session(database, token, policy=POLICY)
    assert error.value.status_code == 401
    assert error.value.message == "session expired or logged out; log in again"


def test_lookup_session_rejects_expired_session(database: Database, alice: User) -> None:
    start = utcnow()
    new = sessions.create_session(database, alice.id, policy=POLICY, now=start)
    with pytest.raises(SessionExpired):
        sessions.lookup_session(database, new.token, policy=POLICY, now=start + timedelta(days=2))
    assert _stored_sessions(database) == []


def test_lookup_session_slides_expiry(database: Database, alice: User) -> None:
    start = utcnow()
    new = sessions.create_session(database, alice.id, policy=POLICY, now=start)
    later = start + timedelta(hours=20)
    active = sessions.lookup_session(database, new.token, policy=POLICY, now=later)
    assert active.expires_at == later + POLICY.idle_timeout
    (stored,) = _stored_sessions(database)
    assert stored.expires_at == later + POLICY.idle_timeout


def test_lookup_session_expiry_stops_at_max_age(database: Database, alice: User) -> None:
    start = utcnow()
    new = sessions.create_session(database, alice.id, policy=POLICY, now=start)
    for hours in (20, 40, 60):
        sessions.lookup_session(
            database, new.token, policy=POLICY, now=start + timedelta(hours=hours)
        )
    with pytest.raises(SessionExpired):
        sessions.lookup_session(database, new.token, policy=POLICY, now=start + timedelta(hours=73))


def test_lookup_session_skips_write_within_a_minute(database: Database, alice: User) -> None:
    start = utcnow()
    new = sessions.create_session(database, alice.id, policy=POLICY, now=start)
    sessions.lookup_session(database, new.token, policy=POLICY, now=start + timedelta(seconds=30))
    (stored,) = _stored_sessions(database)
    assert stored.last_seen_at == start


def test_delete_session_logs_out(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    sessions.delete_session(database, new.token)
    with pytest.raises(SessionExpired):
        sessions.lookup_session(database, new.token, policy=POLICY)


def test_deactivate_ends_all_sessions(database: Database, alice: User) -> None:
    tokens = [sessions.create_session(database, alice.id, policy=POLICY).token for _ in range(2)]
    accounts.deactivate(database, alice.id)
    for token in tokens:
        with pytest.raises(SessionExpired):
            sessions.lookup_session(database, token, policy=POLICY)


def test_role_set_to_pending_ends_sessions(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    accounts.set_role(database, alice.id, Role.PENDING)
    with pytest.raises(SessionExpired):
        sessions.lookup_session(database, new.token, policy=POLICY)


def test_deactivated_account_session_is_not_honoured(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    with database.transaction() as session:
        session.execute(sa.update(User).where(User.id == alice.id).values(deactivated_at=utcnow()))
    with pytest.raises(accounts.AccountDeactivated):
        sessions.lookup_session(database, new.token, policy=POLICY)


def test_delete_user_sessions_counts_them(database: Database, alice: User, admin: User) -> None:
    sessions.create_session(database, alice.id, policy=POLICY)
    sessions.create_session(database, alice.id, policy=POLICY)
    other = sessions.create_session(database, admin.id, policy=POLICY)
    assert sessions.delete_user_sessions(database, alice.id) == 2
    assert sessions.lookup_session(database, other.token, policy=POLICY).user.id == admin.id


def test_purge_expired_sessions_keeps_live_ones(database: Database, alice: User) -> None:
    start = utcnow()
    sessions.create_session(database, alice.id, policy=POLICY, now=start - timedelta(days=2))
    live = sessions.create_session(database, alice.id, policy=POLICY, now=start)
    assert sessions.purge_expired_sessions(database, now=start) == 1
    assert sessions.lookup_session(database, live.token, policy=POLICY).user.id == alice.id


def test_check_csrf_accepts_session_token(database: Database, alice: User) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    active = sessions.lookup_session(database, new.token, policy=POLICY)
    sessions.check_csrf(active, new.csrf_token)


@pytest.mark.parametrize(("submitted", "expected"), [(None, "missing"), ("forged", "invalid")])
def test_check_csrf_rejects_missing_or_wrong_token(
    database: Database, alice: User, submitted: str | None, expected: str
) -> None:
    new = sessions.create_session(database, alice.id, policy=POLICY)
    active = sessions.lookup_session(database, new.token, policy=POLICY)
    with pytest.raises(CsrfFailed, match=f"{expected} CSRF token; reload the page") as error:
        sessions.check_csrf(active, submitted)
    assert error.value.status_code == 403
