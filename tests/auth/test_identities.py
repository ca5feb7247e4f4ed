"""Matching provider identities to accounts: creation, linking, allow lists, roles, unlinking."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmcloud.auth.accounts import create_account, deactivate, set_role
from llmcloud.auth.errors import Conflict, NotFound
from llmcloud.auth.identities import (
    IdentityPolicy,
    RoleChange,
    list_identities,
    sign_in_with_identity,
    unlink_identity,
)
from llmcloud.auth.identity_profile import ProviderProfile
from llmcloud.auth.login_errors import LoginFailed
from llmcloud.db.database import Database
from llmcloud.db.models import Role

POLICY = IdentityPolicy(
    allowed_domains=frozenset(),
    allowed_emails=frozenset(),
    signup=True,
    new_role=Role.PENDING,
    admin_groups=frozenset({"admins"}),
    user_groups=frozenset({"staff"}),
)
PROFILE = ProviderProfile(
    provider="github",
    subject="1001",
    username_hint="octocat",
    email="Octo.Cat@Example.org",
    email_verified=True,
)


@pytest.fixture
def db(database: Database) -> Database:
    """A database whose first account, the admin, already exists."""
    create_account(database, "admin", None, role=Role.ADMIN)
    return database


def test_first_identity_of_empty_database_is_admin(database: Database) -> None:
    result = sign_in_with_identity(database, PROFILE, POLICY)
    assert result.user.role == Role.ADMIN
    assert result.created is True


def test_new_identity_is_pending(db: Database) -> None:
    result = sign_in_with_identity(db, PROFILE, POLICY)
    assert result.user.role == Role.PENDING
    assert result.user.username == "octocat"
    assert result.user.email == "Octo.Cat@Example.org"


def test_new_identity_role_from_policy(db: Database) -> None:
    result = sign_in_with_identity(db, PROFILE, replace(POLICY, new_role=Role.USER))
    assert result.user.role == Role.USER


def test_known_identity_returns_same_account(db: Database) -> None:
    first = sign_in_with_identity(db, PROFILE, POLICY)
    again = sign_in_with_identity(db, replace(PROFILE, email="new@example.org"), POLICY)
    assert again.user.id == first.user.id
    assert again.created is False
    assert list_identities(db, first.user.id)[0].email == "new@example.org"


def test_verified_email_links_ignoring_case(db: Database) -> None:
    existing = create_account(db, "octo", "a long password 123", email="octo.cat@EXAMPLE.ORG")
    result = sign_in_with_identity(db, PROFILE, POLICY)
    assert result.user.id == existing.id
    assert result.linked is True


def test_unverified_email_never_links(db: Database) -> None:
    existing = create_account(db, "octo", None, email="octo.cat@example.org")
    result = sign_in_with_identity(db, replace(PROFILE, email_verified=False), POLICY)
    assert result.user.id != existing.id
    assert result.user.email is None


def test_missing_email_never_links(db: Database) -> None:
    create_account(db, "octo", None, email="octo.cat@example.org")
    result = sign_in_with_identity(db, replace(PROFILE, email=None), POLICY)
    assert result.linked is False


def test_email_of_several_accounts_never_links(db: Database) -> None:
    create_account(db, "octo1", None, email="octo.cat@example.org")
    create_account(db, "octo2", None, email="OCTO.CAT@example.org")
    result = sign_in_with_identity(db, PROFILE, POLICY)
    assert result.linked is False
    assert result.created is True


def test_signup_off_rejects_unknown_identity(db: Database) -> None:
    with pytest.raises(LoginFailed) as caught:
        sign_in_with_identity(db, PROFILE, replace(POLICY, signup=False))
    assert caught.value.reason == "signup_closed"
    assert caught.value.status_code == 403


def test_signup_off_still_links_verified_email(db: Database) -> None:
    existing = create_account(db, "octo", None, email="octo.cat@example.org")
    result = sign_in_with_identity(db, PROFILE, replace(POLICY, signup=False))
    assert result.user.id == existing.id


def test_taken_username_gets_number(db: Database) -> None:
    create_account(db, "octocat", None)
    result = sign_in_with_identity(db, replace(PROFILE, email_verified=False), POLICY)
    assert result.user.username == "octocat-2"


def test_short_username_hint_gets_provider_prefix(db: Database) -> None:
    result = sign_in_with_identity(db, replace(PROFILE, username_hint="x@y.org"), POLICY)
    assert result.user.username == "github-x"


def test_odd_characters_in_username_hint_are_replaced(db: Database) -> None:
    result = sign_in_with_identity(db, replace(PROFILE, username_hint="Jürgen Groß"), POLICY)
    assert result.user.username == "J-rgen-Gro"


@pytest.mark.parametrize(
    ("allowed_domains", "allowed_emails", "email", "verified", "passes"),
    [
        ({"example.org"}, set(), "a@EXAMPLE.org", True, True),
        ({"example.org"}, set(), "a@example.org", False, False),
        ({"example.org"}, set(), "a@sub.example.org", True, False),
        (set(), {"a@example.net"}, "A@Example.NET", True, True),
        (set(), {"a@example.net"}, "b@example.net", True, False),
        ({"example.org"}, set(), None, True, False),
    ],
)
def test_email_allow_lists(
    db: Database,
    allowed_domains: set[str],
    allowed_emails: set[str],
    email: str | None,
    verified: bool,
    passes: bool,
) -> None:
    policy = replace(
        POLICY, allowed_domains=frozenset(allowed_domains), allowed_emails=frozenset(allowed_emails)
    )
    profile = replace(PROFILE, email=email, email_verified=verified)
    if passes:
        assert sign_in_with_identity(db, profile, policy).created is True
        return
    with pytest.raises(LoginFailed) as caught:
        sign_in_with_identity(db, profile, policy)
    assert caught.value.reason == "email_not_allowed"


def test_admin_group_makes_admin(db: Database) -> None:
    result = sign_in_with_identity(db, replace(PROFILE, groups=("admins",)), POLICY)
    assert result.user.role == Role.ADMIN


def test_user_group_approves_pending(db: Database) -> None:
    sign_in_with_identity(db, PROFILE, POLICY)
    result = sign_in_with_identity(db, replace(PROFILE, groups=("staff",)), POLICY)
    assert result.user.role == Role.USER


NO_GROUPS: frozenset[str] = frozenset()
ADMINS = frozenset({"admins"})
STAFF = frozenset({"staff"})


@pytest.mark.parametrize(
    ("admin_groups", "user_groups", "role", "groups", "expected"),
    [
        # Both lists set: the groups decide every role.
        (ADMINS, STAFF, Role.PENDING, ("admins",), Role.ADMIN),
        (ADMINS, STAFF, Role.ADMIN, ("staff",), Role.USER),
        (ADMINS, STAFF, Role.ADMIN, (), Role.PENDING),
        (ADMINS, STAFF, Role.USER, ("other",), Role.PENDING),
        # Only admin_groups: the admin role follows the groups, other roles stay.
        (ADMINS, NO_GROUPS, Role.ADMIN, (), Role.USER),
        (ADMINS, NO_GROUPS, Role.USER, (), Role.USER),
        (ADMINS, NO_GROUPS, Role.PENDING, ("staff",), Role.PENDING),
        # Only user_groups: admins given by hand stay admins.
        (NO_GROUPS, STAFF, Role.ADMIN, (), Role.ADMIN),
        (NO_GROUPS, STAFF, Role.PENDING, ("staff",), Role.USER),
        (NO_GROUPS, STAFF, Role.USER, (), Role.PENDING),
        # No mapping: the groups claim changes nothing.
        (NO_GROUPS, NO_GROUPS, Role.USER, ("admins",), Role.USER),
    ],
)
def test_group_mapping_sets_role(
    db: Database,
    admin_groups: frozenset[str],
    user_groups: frozenset[str],
    role: Role,
    groups: tuple[str, ...],
    expected: Role,
) -> None:
    account = sign_in_with_identity(db, PROFILE, POLICY).user
    set_role(db, account.id, role)
    policy = replace(POLICY, admin_groups=admin_groups, user_groups=user_groups)
    result = sign_in_with_identity(db, replace(PROFILE, groups=groups), policy)
    assert result.user.role == expected


def test_group_mapping_reports_role_change(db: Database) -> None:
    sign_in_with_identity(db, replace(PROFILE, groups=("admins",)), POLICY)
    result = sign_in_with_identity(db, replace(PROFILE, groups=("staff",)), POLICY)
    assert result.role_change == RoleChange(Role.ADMIN, Role.USER, applied=True)
    assert result.role_change.reason == "admin_to_user"


def test_group_mapping_without_change_reports_none(db: Database) -> None:
    sign_in_with_identity(db, replace(PROFILE, groups=("staff",)), POLICY)
    result = sign_in_with_identity(db, replace(PROFILE, groups=("staff",)), POLICY)
    assert result.role_change is None


def test_no_group_gives_new_identity_role(db: Database) -> None:
    policy = replace(POLICY, new_role=Role.USER)
    sign_in_with_identity(db, replace(PROFILE, groups=("admins",)), policy)
    result = sign_in_with_identity(db, PROFILE, policy)
    assert result.user.role == Role.USER


def test_unknown_groups_keep_role(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    sign_in_with_identity(db, replace(PROFILE, groups=("admins",)), POLICY)
    result = sign_in_with_identity(db, replace(PROFILE, groups=None), POLICY)
    assert result.user.role == Role.ADMIN
    assert result.role_change is None
    assert "distributed claim" in caplog.text


def test_group_mapping_keeps_last_admin(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    first = sign_in_with_identity(database, PROFILE, POLICY)
    assert first.user.role == Role.ADMIN  # the first account of all
    result = sign_in_with_identity(database, replace(PROFILE, groups=("staff",)), POLICY)
    assert result.user.role == Role.ADMIN
    assert result.role_change == RoleChange(Role.ADMIN, Role.USER, applied=False)
    assert result.role_change.reason == "last_active_admin"
    assert "last active admin" in caplog.text


def test_group_mapping_demotes_deactivated_admin(db: Database) -> None:
    account = sign_in_with_identity(db, replace(PROFILE, groups=("admins",)), POLICY).user
    deactivate(db, account.id)
    result = sign_in_with_identity(db, PROFILE, POLICY)
    assert result.user.role == Role.PENDING
    assert result.role_change == RoleChange(Role.ADMIN, Role.PENDING, applied=True)


def test_unlink_removes_identity(db: Database) -> None:
    existing = create_account(db, "octo", "a long password 123", email="octo.cat@example.org")
    sign_in_with_identity(db, PROFILE, POLICY)
    identity = list_identities(db, existing.id)[0]
    unlink_identity(db, existing.id, identity.id)
    assert list_identities(db, existing.id) == []


def test_unlink_keeps_only_way_in(db: Database) -> None:
    user = sign_in_with_identity(db, PROFILE, POLICY).user
    identity = list_identities(db, user.id)[0]
    with pytest.raises(Conflict):
        unlink_identity(db, user.id, identity.id)


def test_unlink_rejects_identity_of_other_account(db: Database) -> None:
    user = sign_in_with_identity(db, PROFILE, POLICY).user
    identity = list_identities(db, user.id)[0]
    with pytest.raises(NotFound):
        unlink_identity(db, user.id + 100, identity.id)
