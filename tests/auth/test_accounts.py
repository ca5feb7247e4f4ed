from __future__ import annotations

import string
import threading
from collections.abc import Callable
from typing import Literal

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from llmcloud.auth import accounts
from llmcloud.auth.errors import (
    AccountDeactivated,
    AccountPending,
    Conflict,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    ServiceError,
    SignupClosed,
)
from llmcloud.db import Database
from llmcloud.db.models import Role

PASSWORD = "correct horse battery"


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
def sign_up(database: Database, hasher: PasswordHasher) -> Callable[..., accounts.User]:
    def sign_up(username: str, mode: accounts.SignupMode = "approval") -> accounts.User:
        return accounts.sign_up(database, username, PASSWORD, signup_mode=mode, hasher=hasher)

    return sign_up


@pytest.fixture
def admin(sign_up: Callable[..., accounts.User]) -> accounts.User:
    return sign_up("root")


def test_sign_up_first_account_is_admin(sign_up: Callable[..., accounts.User]) -> None:
    assert sign_up("root").role is Role.ADMIN


def test_sign_up_later_account_is_pending(
    sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    assert sign_up("alice").role is Role.PENDING


def test_sign_up_open_mode_makes_user(
    sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    assert sign_up("alice", "open").role is Role.USER


def test_sign_up_closed_mode_allows_first_account(
    sign_up: Callable[..., accounts.User],
) -> None:
    assert sign_up("root", "closed").role is Role.ADMIN


def test_sign_up_closed_mode_rejects_later_accounts(
    sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    with pytest.raises(SignupClosed) as error:
        sign_up("alice", "closed")
    assert error.value.status_code == 403
    assert "ask an admin" in error.value.message


def test_sign_up_race_makes_one_admin(database: Database, hasher: PasswordHasher) -> None:
    results: list[accounts.User] = []
    barrier = threading.Barrier(6)

    def sign_up(index: int) -> None:
        barrier.wait()
        results.append(accounts.sign_up(database, f"racer{index}", PASSWORD, hasher=hasher))

    threads = [threading.Thread(target=sign_up, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    roles = sorted(user.role for user in results)
    assert roles == [Role.ADMIN] + [Role.PENDING] * 5


def test_sign_up_same_username_race(database: Database, hasher: PasswordHasher) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def sign_up(index: int) -> None:
        barrier.wait()
        try:
            accounts.sign_up(
                database, ["same", "Same", "SAME", "same"][index], PASSWORD, hasher=hasher
            )
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=sign_up, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "created"]


def test_sign_up_rejects_taken_username_in_other_case(
    sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    with pytest.raises(Conflict) as error:
        sign_up("ROOT")
    assert error.value.message == "username 'ROOT' is already taken; choose another"


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("ab", "username 'ab' has 2 characters; expected 3 to 64"),
        ("a" * 65, "has 65 characters; expected 3 to 64"),
        ("john doe", "username 'john doe' contains ' '; use only letters"),
        ("émile", "contains 'é'"),
        ("bob/../x", "contains '/'"),
        ("", "username '' has 0 characters"),
    ],
)
def test_sign_up_rejects_bad_username(
    sign_up: Callable[..., accounts.User], username: str, expected: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        sign_up(username)
    assert expected in error.value.message


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("short", "password is too short: 5 characters, expected at least 8"),
        ("x" * 1025, "password is too long: 1025 characters"),
        ("alice-smith", "password must differ from the username"),
    ],
)
def test_sign_up_rejects_bad_password(
    database: Database, hasher: PasswordHasher, password: str, expected: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        accounts.sign_up(database, "alice-smith", password, hasher=hasher)
    assert expected in error.value.message
    assert accounts.list_accounts(database) == []


def test_sign_up_rejects_bad_email(database: Database, hasher: PasswordHasher) -> None:
    with pytest.raises(InvalidInput, match="email address 'alice at home' is invalid"):
        accounts.sign_up(database, "alice", PASSWORD, email="alice at home", hasher=hasher)


def test_authenticate_returns_account(
    database: Database, hasher: PasswordHasher, admin: accounts.User
) -> None:
    user = accounts.authenticate(database, "Root", PASSWORD, hasher=hasher)
    assert user.id == admin.id
    assert user.last_login_at is not None


def test_authenticate_rejects_wrong_password(
    database: Database, hasher: PasswordHasher, admin: accounts.User
) -> None:
    with pytest.raises(InvalidCredentials) as error:
        accounts.authenticate(database, "root", "wrong password", hasher=hasher)
    assert error.value.status_code == 401
    assert error.value.message == "invalid username or password"


def test_authenticate_unknown_user_gets_same_error(
    database: Database, hasher: PasswordHasher
) -> None:
    with pytest.raises(InvalidCredentials) as error:
        accounts.authenticate(database, "nobody", PASSWORD, hasher=hasher)
    assert error.value.message == "invalid username or password"


def test_authenticate_unknown_user_still_verifies_a_hash(database: Database) -> None:
    counting = CountingHasher()
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(database, "nobody", PASSWORD, hasher=counting)
    assert counting.verifications == 1


def test_authenticate_pending_user_fails_until_approved(
    database: Database,
    hasher: PasswordHasher,
    sign_up: Callable[..., accounts.User],
    admin: accounts.User,
) -> None:
    alice = sign_up("alice")
    with pytest.raises(AccountPending) as error:
        accounts.authenticate(database, "alice", PASSWORD, hasher=hasher)
    assert error.value.status_code == 403
    assert "waiting for an admin's approval" in error.value.message

    accounts.approve(database, alice.id)
    assert accounts.authenticate(database, "alice", PASSWORD, hasher=hasher).role is Role.USER


def test_authenticate_pending_user_with_wrong_password_reveals_nothing(
    database: Database,
    hasher: PasswordHasher,
    sign_up: Callable[..., accounts.User],
    admin: accounts.User,
) -> None:
    sign_up("alice")
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(database, "alice", "wrong password", hasher=hasher)


def test_authenticate_deactivated_user_fails(
    database: Database,
    hasher: PasswordHasher,
    sign_up: Callable[..., accounts.User],
    admin: accounts.User,
) -> None:
    alice = sign_up("alice", "open")
    accounts.deactivate(database, alice.id)
    with pytest.raises(AccountDeactivated, match="'alice' is deactivated; ask an admin"):
        accounts.authenticate(database, "alice", PASSWORD, hasher=hasher)


def test_authenticate_reactivated_user_succeeds(
    database: Database,
    hasher: PasswordHasher,
    sign_up: Callable[..., accounts.User],
    admin: accounts.User,
) -> None:
    alice = sign_up("alice", "open")
    accounts.deactivate(database, alice.id)
    accounts.reactivate(database, alice.id)
    assert accounts.authenticate(database, "alice", PASSWORD, hasher=hasher).id == alice.id


def test_authenticate_upgrades_old_hash(
    database: Database, hasher: PasswordHasher, admin: accounts.User
) -> None:
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    upgraded = accounts.authenticate(database, "root", PASSWORD, hasher=stronger)
    assert upgraded.password_hash is not None
    assert not stronger.check_needs_rehash(upgraded.password_hash)


def test_account_without_password_cannot_log_in(database: Database, hasher: PasswordHasher) -> None:
    accounts.create_account(database, "oauth-only", None, hasher=hasher)
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(database, "oauth-only", PASSWORD, hasher=hasher)


def test_create_account_ignores_signup_mode(
    database: Database, hasher: PasswordHasher, admin: accounts.User
) -> None:
    user = accounts.create_account(database, "alice", PASSWORD, role=Role.ADMIN, hasher=hasher)
    assert user.role is Role.ADMIN


def test_approve_rejects_account_that_is_not_pending(
    database: Database, admin: accounts.User
) -> None:
    with pytest.raises(Conflict, match="'root' is not pending approval"):
        accounts.approve(database, admin.id)


def test_set_role_rejects_unknown_role(database: Database, admin: accounts.User) -> None:
    with pytest.raises(InvalidInput, match="role 'superuser' is unknown; expected one of: admin"):
        accounts.set_role(database, admin.id, "superuser")


def test_set_role_keeps_last_admin(database: Database, admin: accounts.User) -> None:
    with pytest.raises(Conflict, match="the only active admin; make another account admin first"):
        accounts.set_role(database, admin.id, Role.USER)
    assert accounts.get_account(database, admin.id).role is Role.ADMIN


def test_set_role_demotes_admin_when_another_exists(
    database: Database, sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    alice = sign_up("alice")
    accounts.set_role(database, alice.id, "admin")
    assert accounts.set_role(database, admin.id, "user").role is Role.USER


def test_deactivate_keeps_last_admin(database: Database, admin: accounts.User) -> None:
    with pytest.raises(Conflict, match="cannot deactivate 'root'"):
        accounts.deactivate(database, admin.id)
    assert accounts.get_account(database, admin.id).is_active


def test_delete_account_keeps_last_admin(database: Database, admin: accounts.User) -> None:
    with pytest.raises(Conflict, match="cannot delete 'root'"):
        accounts.delete_account(database, admin.id)


def test_delete_account_removes_it(
    database: Database, sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    alice = sign_up("alice")
    accounts.delete_account(database, alice.id)
    assert accounts.find_account(database, "alice") is None


@pytest.mark.parametrize(
    "action",
    [accounts.get_account, accounts.approve, accounts.deactivate, accounts.delete_account],
)
def test_unknown_account_id_is_not_found(
    database: Database, action: Callable[[Database, int], object]
) -> None:
    with pytest.raises(NotFound, match="account 999999999 not found") as error:
        action(database, 999_999_999)
    assert isinstance(error.value, ServiceError)


def test_list_accounts_filters_by_role(
    database: Database, sign_up: Callable[..., accounts.User], admin: accounts.User
) -> None:
    sign_up("alice")
    sign_up("bob", "open")
    pending = accounts.list_accounts(database, role=Role.PENDING)
    assert [user.username for user in pending] == ["alice"]


def test_create_account_rejects_unknown_role(database: Database, hasher: PasswordHasher) -> None:
    with pytest.raises(InvalidInput, match="role 'owner' is unknown"):
        accounts.create_account(database, "alice", PASSWORD, role="owner", hasher=hasher)
    assert accounts.list_accounts(database) == []


@given(st.text(max_size=80))
def test_validate_username_accepts_only_the_rule(username: str) -> None:
    allowed = set(string.ascii_letters + string.digits + "._-")
    follows_rule = 3 <= len(username) <= 64 and set(username) <= allowed
    try:
        accounts.validate_username(username)
    except InvalidInput:
        assert not follows_rule
    else:
        assert follows_rule


def test_find_account_ignores_non_ascii_lookalikes(
    database: Database, sign_up: Callable[..., accounts.User]
) -> None:
    sign_up("kate")
    assert accounts.find_account(database, "\u212aate") is None
