"""The in-process cache of checked API keys: hits, invalidation in this process, expiry, renewal."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from llmcloud.auth import accounts, api_key_cache, api_keys
from llmcloud.auth.errors import AccountDeactivated, AccountPending, InvalidCredentials
from llmcloud.db import Database
from llmcloud.db.models import ApiKey, User, utcnow

PASSWORD = "correct horse battery"


@pytest.fixture
def admin(database: Database, hasher: PasswordHasher) -> User:
    return accounts.sign_up(database, "root", PASSWORD, hasher=hasher)


@pytest.fixture
def alice(database: Database, hasher: PasswordHasher, admin: User) -> User:
    return accounts.sign_up(database, "alice", PASSWORD, signup_mode="open", hasher=hasher)


@pytest.fixture
def key(database: Database, alice: User) -> str:
    return api_keys.create_api_key(database, alice.id, "laptop").key


def revoke_behind_the_cache(database: Database, key: str) -> None:
    """Revoke a key as another process would: in the database only."""
    with database.transaction() as session:
        session.execute(
            sa.update(ApiKey)
            .where(ApiKey.key_hash == api_keys.hash_key(key))
            .values(revoked_at=utcnow())
        )


def test_cache_is_empty_before_first_check(database: Database, key: str) -> None:
    assert api_keys.cached_bearer_account(database, f"Bearer {key}") is None


def test_checked_key_is_served_from_cache(database: Database, alice: User, key: str) -> None:
    api_keys.authenticate_bearer(database, f"Bearer {key}")
    cached = api_keys.cached_bearer_account(database, f"Bearer {key}")
    assert cached is not None
    assert cached.user.id == alice.id
    assert not cached.check_due


@pytest.mark.parametrize("header", [None, "", "Basic YWxpY2U6eA==", "Bearer llmc_short"])
def test_cache_ignores_bad_header(database: Database, key: str, header: str | None) -> None:
    api_keys.authenticate_bearer(database, f"Bearer {key}")
    assert api_keys.cached_bearer_account(database, header) is None


def test_failed_check_is_not_cached(database: Database, alice: User, key: str) -> None:
    accounts.deactivate(database, alice.id)
    with pytest.raises(AccountDeactivated):
        api_keys.authenticate_bearer(database, f"Bearer {key}")
    assert api_keys.cached_bearer_account(database, f"Bearer {key}") is None


def test_revoking_key_empties_cache_at_once(database: Database, alice: User, key: str) -> None:
    api_keys.authenticate_api_key(database, key)
    record = api_keys.list_api_keys(database, alice.id)[0]
    api_keys.revoke_api_key(database, alice.id, record.id)
    assert api_keys.cached_bearer_account(database, f"Bearer {key}") is None
    with pytest.raises(InvalidCredentials, match="was revoked"):
        api_keys.authenticate_api_key(database, key)


def test_deactivating_account_empties_cache(database: Database, alice: User, key: str) -> None:
    api_keys.authenticate_api_key(database, key)
    accounts.deactivate(database, alice.id)
    with pytest.raises(AccountDeactivated):
        api_keys.authenticate_api_key(database, key)


def test_setting_role_pending_empties_cache(database: Database, alice: User, key: str) -> None:
    api_keys.authenticate_api_key(database, key)
    accounts.set_role(database, alice.id, "pending")
    with pytest.raises(AccountPending):
        api_keys.authenticate_api_key(database, key)


def test_revocation_elsewhere_applies_after_ttl(
    database: Database, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_keys.authenticate_api_key(database, key)
    revoke_behind_the_cache(database, key)
    still_cached = api_keys.cached_bearer_account(database, f"Bearer {key}")

    later = time.monotonic() + api_key_cache.TTL_SECONDS
    monkeypatch.setattr(api_key_cache.time, "monotonic", lambda: later)
    assert still_cached is not None
    assert api_keys.cached_bearer_account(database, f"Bearer {key}") is None
    with pytest.raises(InvalidCredentials, match="was revoked"):
        api_keys.authenticate_api_key(database, key)


def test_lookup_older_than_invalidation_is_not_stored(database: Database, alice: User) -> None:
    started = api_key_cache.generation()
    api_key_cache.invalidate()
    api_key_cache.store(database, "digest", alice, 1, None, started)
    assert api_key_cache.lookup(database, "digest") is None


def test_use_record_due_marks_check_due(database: Database, key: str) -> None:
    first = utcnow()
    api_keys.authenticate_api_key(database, key, now=first)
    due = first + api_keys.USE_RECORD_INTERVAL
    cached_when_due = api_keys.cached_bearer_account(database, f"Bearer {key}", now=due)
    api_keys.authenticate_api_key(database, key, now=due, renew=True)

    with database.session() as session:
        recorded = session.scalar(sa.select(ApiKey.last_used_at))
    assert cached_when_due is not None
    assert cached_when_due.check_due
    assert recorded == due


def later_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Advance time.monotonic(), which both modules read, by `seconds`."""
    later = time.monotonic() + seconds
    monkeypatch.setattr(time, "monotonic", lambda: later)


def test_half_life_entry_marks_check_due(
    database: Database, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_keys.authenticate_api_key(database, key)
    later_by(monkeypatch, api_key_cache.RENEW_AFTER_SECONDS)
    cached = api_keys.cached_bearer_account(database, f"Bearer {key}")
    assert cached is not None
    assert cached.check_due


def test_renewal_gives_entry_a_new_life(
    database: Database, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_keys.authenticate_api_key(database, key)
    later_by(monkeypatch, api_key_cache.RENEW_AFTER_SECONDS)
    api_keys.authenticate_bearer(database, f"Bearer {key}", renew=True)
    # Past the end of the first entry's life.
    later_by(monkeypatch, api_key_cache.TTL_SECONDS - api_key_cache.RENEW_AFTER_SECONDS + 0.1)
    assert api_keys.cached_bearer_account(database, f"Bearer {key}") is not None


def test_renewal_of_key_revoked_elsewhere_drops_entry(
    database: Database, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_keys.authenticate_api_key(database, key)
    revoke_behind_the_cache(database, key)
    later_by(monkeypatch, api_key_cache.RENEW_AFTER_SECONDS)
    with pytest.raises(InvalidCredentials, match="was revoked"):
        api_keys.authenticate_bearer(database, f"Bearer {key}", renew=True)
    assert api_keys.cached_bearer_account(database, f"Bearer {key}") is None
