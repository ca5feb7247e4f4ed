"""Logins to the proxy: roles, the login cache and the per-address failure limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmcloud.auth.accounts import create_account, deactivate, find_account
from llmcloud.db import Database, open_database
from llmcloud.db.testing import prepare_database
from llmcloud.socks.auth import AccountAuthenticator, FailureLimiter
from tests.socks.conftest import CHEAP_HASHER, PASSWORD


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path) -> Database:
    database = open_database(f"sqlite:///{tmp_path / 'llmcloud.db'}")
    prepare_database(database)
    create_account(database, "carol", PASSWORD, role="admin", hasher=CHEAP_HASHER)
    create_account(database, "dave", PASSWORD, role="admin", hasher=CHEAP_HASHER)
    create_account(database, "erin", PASSWORD, role="user", hasher=CHEAP_HASHER)
    return database


def authenticator(database: Database, clock: FakeClock, **options: float) -> AccountAuthenticator:
    return AccountAuthenticator(database, ["admin"], hasher=CHEAP_HASHER, clock=clock, **options)


def test_role_in_settings_may_log_in(database: Database) -> None:
    check = AccountAuthenticator(database, ["admin", "user"], hasher=CHEAP_HASHER)
    assert asyncio.run(check("erin", PASSWORD)) == "erin"


def test_other_role_rejected(database: Database) -> None:
    assert asyncio.run(authenticator(database, FakeClock())("erin", PASSWORD)) is None


def test_cached_login_lasts_until_expiry(database: Database) -> None:
    clock = FakeClock()
    check = authenticator(database, clock, cache_seconds=60)
    assert asyncio.run(check("carol", PASSWORD)) == "carol"
    user_id = account_id(database, "carol")
    deactivate(database, user_id)
    clock.now += 59
    assert asyncio.run(check("carol", PASSWORD)) == "carol"
    clock.now += 2
    assert asyncio.run(check("carol", PASSWORD)) is None


def test_cache_off_checks_every_login(database: Database) -> None:
    check = authenticator(database, FakeClock(), cache_seconds=0)
    assert asyncio.run(check("dave", PASSWORD)) == "dave"
    user_id = account_id(database, "dave")
    deactivate(database, user_id)
    assert asyncio.run(check("dave", PASSWORD)) is None


def test_cache_needs_the_same_password(database: Database) -> None:
    check = authenticator(database, FakeClock(), cache_seconds=60)
    assert asyncio.run(check("carol", PASSWORD)) == "carol"
    assert asyncio.run(check("carol", PASSWORD + "x")) is None


def test_limiter_blocks_after_max_failures() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(3, 60.0, clock)
    for _ in range(3):
        limiter.record_failure("192.0.2.1")
    assert limiter.is_blocked("192.0.2.1")
    assert not limiter.is_blocked("192.0.2.2")


def test_limiter_forgets_old_failures() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(2, 60.0, clock)
    limiter.record_failure("192.0.2.1")
    limiter.record_failure("192.0.2.1")
    clock.now += 61
    assert not limiter.is_blocked("192.0.2.1")


def account_id(database: Database, username: str) -> int:
    account = find_account(database, username)
    assert account is not None
    return account.id


def test_simultaneous_logins_share_one_check(database: Database) -> None:
    check = authenticator(database, FakeClock(), cache_seconds=60)
    checks = 0
    original = check._check

    async def counted(username: str, password: str) -> str | None:
        nonlocal checks
        checks += 1
        return await original(username, password)

    check._check = counted  # type: ignore[method-assign]

    async def log_in_many() -> list[str | None]:
        return await asyncio.gather(*(check("carol", PASSWORD) for _ in range(20)))

    assert asyncio.run(log_in_many()) == ["carol"] * 20
    assert checks == 1
