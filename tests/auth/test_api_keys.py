from __future__ import annotations

from datetime import timedelta

import pytest
from argon2 import PasswordHasher

from llmcloud.auth import accounts, api_keys
from llmcloud.auth.errors import (
    AccountDeactivated,
    AccountPending,
    Conflict,
    InvalidCredentials,
    InvalidInput,
    NotFound,
)
from llmcloud.db import Database
from llmcloud.db.models import User, utcnow

PASSWORD = "correct horse battery"


@pytest.fixture
def admin(database: Database, hasher: PasswordHasher) -> User:
    return accounts.sign_up(database, "root", PASSWORD, hasher=hasher)


@pytest.fixture
def alice(database: Database, hasher: PasswordHasher, admin: User) -> User:
    return accounts.sign_up(database, "alice", PASSWORD, signup_mode="open", hasher=hasher)


def test_create_api_key_returns_full_key_once(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    assert new.key.startswith("llmc_")
    assert len(new.key) == api_keys.KEY_LENGTH


def test_create_api_key_stores_prefix_and_hash(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    (listed,) = api_keys.list_api_keys(database, alice.id)
    assert listed.prefix == new.key[:13]
    assert listed.key_hash == api_keys.hash_key(new.key)


def test_authenticate_api_key_returns_owner(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    assert api_keys.authenticate_api_key(database, new.key).id == alice.id


def test_authenticate_api_key_records_use(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    api_keys.authenticate_api_key(database, new.key)
    (listed,) = api_keys.list_api_keys(database, alice.id)
    assert listed.last_used_at is not None


def test_authenticate_api_key_records_use_once_a_minute(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    first = utcnow()
    api_keys.authenticate_api_key(database, new.key, now=first)
    api_keys.authenticate_api_key(database, new.key, now=first + timedelta(seconds=30))
    (listed,) = api_keys.list_api_keys(database, alice.id)
    assert listed.last_used_at == first


def test_revoked_api_key_fails(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    api_keys.revoke_api_key(database, alice.id, new.record.id)
    with pytest.raises(InvalidCredentials) as error:
        api_keys.authenticate_api_key(database, new.key)
    assert error.value.status_code == 401
    assert error.value.message.startswith(f"API key {new.key[:13]}... was revoked")


def test_revoke_api_key_of_other_user_looks_missing(
    database: Database, alice: User, admin: User
) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    with pytest.raises(NotFound, match=f"API key {new.record.id} not found"):
        api_keys.revoke_api_key(database, admin.id, new.record.id)
    assert api_keys.authenticate_api_key(database, new.key).id == alice.id


def test_deactivated_account_key_fails(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    accounts.deactivate(database, alice.id)
    with pytest.raises(AccountDeactivated) as error:
        api_keys.authenticate_api_key(database, new.key)
    assert error.value.status_code == 403


def test_reactivated_account_key_works_again(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    accounts.deactivate(database, alice.id)
    accounts.reactivate(database, alice.id)
    assert api_keys.authenticate_api_key(database, new.key).id == alice.id


def test_pending_account_cannot_create_key(
    database: Database, hasher: PasswordHasher, admin: User
) -> None:
    pending = accounts.sign_up(database, "bob", PASSWORD, hasher=hasher)
    with pytest.raises(AccountPending):
        api_keys.create_api_key(database, pending.id, "laptop")


def test_key_of_account_set_back_to_pending_fails(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    accounts.set_role(database, alice.id, "pending")
    with pytest.raises(AccountPending):
        api_keys.authenticate_api_key(database, new.key)


@pytest.mark.parametrize(
    "key", ["", "llmc_short", "sk-" + "x" * 45, "llmc_" + "A" * 43], ids=str.__len__
)
def test_authenticate_api_key_rejects_unknown_key(database: Database, key: str) -> None:
    with pytest.raises(InvalidCredentials) as error:
        api_keys.authenticate_api_key(database, key)
    assert error.value.message == (
        "invalid API key; send 'Authorization: Bearer llmc_...' with a key from the API keys page"
    )


def test_authenticate_bearer_accepts_header(database: Database, alice: User) -> None:
    new = api_keys.create_api_key(database, alice.id, "laptop")
    assert api_keys.authenticate_bearer(database, f"Bearer {new.key}").id == alice.id


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, "missing API key"), ("", "missing API key"), ("Basic YWxpY2U6eA==", "invalid API key")],
)
def test_authenticate_bearer_rejects_bad_header(
    database: Database, header: str | None, expected: str
) -> None:
    with pytest.raises(InvalidCredentials, match=expected):
        api_keys.authenticate_bearer(database, header)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", "API key name '' has 0 characters; expected 1 to 64"),
        ("x" * 65, "has 65 characters"),
        ("bad\nname", "contains control characters"),
    ],
)
def test_create_api_key_rejects_bad_name(
    database: Database, alice: User, name: str, expected: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        api_keys.create_api_key(database, alice.id, name)
    assert expected in error.value.message
    assert api_keys.list_api_keys(database, alice.id) == []


def test_create_api_key_stops_at_maximum(
    database: Database, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_keys, "MAX_ACTIVE_KEYS_PER_USER", 2)
    first = api_keys.create_api_key(database, alice.id, "one")
    api_keys.create_api_key(database, alice.id, "two")
    with pytest.raises(Conflict, match="already has 2 active API keys"):
        api_keys.create_api_key(database, alice.id, "three")
    api_keys.revoke_api_key(database, alice.id, first.record.id)
    assert api_keys.create_api_key(database, alice.id, "three").record.name == "three"


def test_list_api_keys_newest_first(database: Database, alice: User) -> None:
    api_keys.create_api_key(database, alice.id, "old")
    api_keys.create_api_key(database, alice.id, "new")
    assert [key.name for key in api_keys.list_api_keys(database, alice.id)] == ["new", "old"]


def test_second_active_key_of_one_name_is_rejected(database: Database, alice: User) -> None:
    first = api_keys.create_api_key(database, alice.id, "laptop")
    with pytest.raises(Conflict, match="an active API key named 'laptop' already exists"):
        api_keys.create_api_key(database, alice.id, "laptop")
    assert len(api_keys.list_api_keys(database, alice.id)) == 1
    api_keys.revoke_api_key(database, alice.id, first.record.id)
    assert api_keys.create_api_key(database, alice.id, "laptop").record.name == "laptop"
