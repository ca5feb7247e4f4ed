"""Turning a provider's identity into an llmcloud account, and the admin view of identities.

An identity is found by (provider, subject). A new identity links to an
existing account only when the provider marked its email verified and
exactly one account has that email, compared case-insensitively; an
unverified or missing email never links, so nobody logs in as someone else
by claiming their address. Otherwise a new account is created, unless
sign-up through providers is off. New accounts are `pending` unless
`auth_new_identity_role` says `user`; the first account of all becomes
admin, as with local sign-up.

The email allow lists apply to every provider and every login: when either
list is set, only a verified email from an allowed domain or on the list of
addresses passes.

An OIDC provider's groups claim decides the role at every login through it,
for the part of the mapping that is configured. With `admin_groups` set, a
member becomes admin and an admin outside those groups loses the role. With
`user_groups` set, a member becomes a user and an account in neither list
gets `auth_new_identity_role` (pending by default), so a role given by hand
lasts only until the next login. Whatever is not configured keeps the role
that an admin gave. The last active admin is never demoted: the login
proceeds with the role kept and a warning in the log. A missing groups claim
counts as no groups. A groups claim that the provider only references, as an
aggregated or distributed claim, leaves the role unchanged with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmcloud.auth import api_key_cache
from llmcloud.auth.accounts import (
    ACCOUNTS_LOCK,
    MAX_USERNAME_LENGTH,
    MIN_USERNAME_LENGTH,
    is_last_active_admin,
)
from llmcloud.auth.errors import Conflict, NotFound
from llmcloud.auth.identity_profile import ProviderProfile
from llmcloud.auth.login_errors import forbidden
from llmcloud.db.database import Database
from llmcloud.db.models import Identity, Role, User, UserSession, utcnow
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.auth")

_NOT_USERNAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class IdentityPolicy:
    allowed_domains: frozenset[str]
    allowed_emails: frozenset[str]
    signup: bool
    new_role: Role
    admin_groups: frozenset[str] = frozenset()
    user_groups: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, provider: str) -> IdentityPolicy:
        oidc = next((p for p in settings.auth_oidc_providers or [] if p.name == provider), None)
        return cls(
            allowed_domains=frozenset(
                d.lower().lstrip("@") for d in settings.auth_allowed_email_domains
            ),
            allowed_emails=frozenset(e.lower() for e in settings.auth_allowed_emails),
            signup=settings.auth_provider_signup,
            new_role=Role(settings.auth_new_identity_role),
            admin_groups=frozenset(oidc.admin_groups) if oidc else frozenset(),
            user_groups=frozenset(oidc.user_groups) if oidc else frozenset(),
        )


@dataclass(frozen=True)
class RoleChange:
    """A role change that the groups claim caused at login.

    `applied` is false when the account kept `old_role` because it is the last active admin.
    """

    old_role: Role
    new_role: Role
    applied: bool

    @property
    def reason(self) -> str:
        """The audit reason code, such as `admin_to_user` or `last_active_admin`."""
        if not self.applied:
            return "last_active_admin"
        return f"{self.old_role.value}_to_{self.new_role.value}"


@dataclass(frozen=True)
class SignInResult:
    user: User
    linked: bool
    created: bool
    role_change: RoleChange | None = None


def sign_in_with_identity(
    db: Database, profile: ProviderProfile, policy: IdentityPolicy
) -> SignInResult:
    """Return the account of a provider identity, linking or creating it as the docstring says.

    Raises LoginFailed (403) with reason `email_not_allowed` or `signup_closed`.
    The account may still be pending or deactivated: the caller checks that
    with `check_can_log_in()` before it creates a session.
    """
    _check_allow_lists(profile, policy)
    with db.transaction() as session:
        db.lock(session, ACCOUNTS_LOCK)
        identity = _find_identity(session, profile.provider, profile.subject)
        linked = created = False
        if identity is None:
            user = _find_by_verified_email(session, profile)
            linked = user is not None
            if user is None:
                user = _create_user(session, profile, policy)
                created = True
            identity = Identity(user_id=user.id, provider=profile.provider, subject=profile.subject)
            session.add(identity)
        else:
            user = session.get(User, identity.user_id)
            assert user is not None, "identities cascade with their user"
        identity.email = profile.email
        identity.email_verified = profile.email_verified
        identity.last_login_at = utcnow()
        role_change = _apply_group_roles(session, user, profile, policy)
        if user.is_active and user.role != Role.PENDING:
            user.last_login_at = utcnow()
        session.flush()
    if role_change is not None and role_change.applied:
        api_key_cache.invalidate()
    return SignInResult(user=user, linked=linked, created=created, role_change=role_change)


def list_identities(db: Database, user_id: int) -> Sequence[Identity]:
    query = sa.select(Identity).where(Identity.user_id == user_id).order_by(Identity.id)
    with db.session() as session:
        return session.scalars(query).all()


def unlink_identity(db: Database, user_id: int, identity_id: int) -> Identity:
    """Remove an identity from an account, so that the provider log-in no longer reaches it.

    Raises NotFound for an identity that is not the account's, and Conflict
    when it is the only way into an account without a password.
    """
    with db.transaction() as session:
        identity = session.get(Identity, identity_id)
        if identity is None or identity.user_id != user_id:
            raise NotFound(f"identity {identity_id} of account {user_id} not found")
        user = session.get(User, user_id)
        others = session.scalar(
            sa.select(sa.func.count())
            .select_from(Identity)
            .where(Identity.user_id == user_id, Identity.id != identity_id)
        )
        if user is not None and user.password_hash is None and not others:
            raise Conflict(
                f"identity {identity_id} is the only way to log in to {user.username!r}, which "
                "has no password; delete the account instead, or link another identity first"
            )
        session.delete(identity)
    log.info("identity %s (%s) unlinked from account %s", identity_id, identity.provider, user_id)
    return identity


def _check_allow_lists(profile: ProviderProfile, policy: IdentityPolicy) -> None:
    if not policy.allowed_domains and not policy.allowed_emails:
        return
    email = (profile.email or "").lower()
    domain = email.rpartition("@")[2]
    allowed = email in policy.allowed_emails or domain in policy.allowed_domains
    if not profile.email_verified or not email or not allowed:
        raise forbidden(
            "email_not_allowed",
            "your account at the provider has no verified email address that this server "
            "allows; ask an admin to add your address or domain to the allow list",
        )


def _find_identity(session: Session, provider: str, subject: str) -> Identity | None:
    query = sa.select(Identity).where(Identity.provider == provider, Identity.subject == subject)
    return session.scalars(query).one_or_none()


def _find_by_verified_email(session: Session, profile: ProviderProfile) -> User | None:
    if not profile.email_verified or not profile.email:
        return None
    query = sa.select(User).where(sa.func.lower(User.email) == profile.email.lower())
    matches = session.scalars(query.limit(2)).all()
    if len(matches) != 1:
        if matches:
            log.warning(
                "email of a %s identity matches several accounts; not linked", profile.provider
            )
        return None
    return matches[0]


def _create_user(session: Session, profile: ProviderProfile, policy: IdentityPolicy) -> User:
    if session.scalar(sa.select(sa.func.count()).select_from(User)) == 0:
        role = Role.ADMIN
    elif not policy.signup:
        raise forbidden(
            "signup_closed",
            "no account here belongs to this identity, and sign-up through login providers "
            "is switched off; ask an admin to create an account for you",
        )
    else:
        role = policy.new_role
    email = profile.email if profile.email_verified else None
    user = User(username=_free_username(session, profile), email=email, role=role)
    session.add(user)
    session.flush()
    log.info("account %s (%s) created through %s", user.id, user.username, profile.provider)
    return user


def _free_username(session: Session, profile: ProviderProfile) -> str:
    """Derive a valid, unused username from the provider's login name or email."""
    hint = profile.username_hint.partition("@")[0]
    base = _NOT_USERNAME.sub("-", hint).strip("-.")[: MAX_USERNAME_LENGTH - 6]
    if len(base) < MIN_USERNAME_LENGTH:
        base = f"{profile.provider}-{base}".strip("-")[: MAX_USERNAME_LENGTH - 6]
    candidate = base
    for number in range(2, 10_000):
        taken = session.scalar(
            sa.select(sa.func.count())
            .select_from(User)
            .where(sa.func.lower(User.username) == candidate.lower())
        )
        if not taken:
            return candidate
        candidate = f"{base}-{number}"
    raise Conflict(f"no free username left for {base!r}")


def _apply_group_roles(
    session: Session, user: User, profile: ProviderProfile, policy: IdentityPolicy
) -> RoleChange | None:
    """Set the role that the groups claim gives, by the rules in the module docstring."""
    if not policy.admin_groups and not policy.user_groups:
        return None
    if profile.groups is None:
        log.warning(
            "account %s keeps the role %s because %s sent its groups claim as an aggregated or "
            "distributed claim, which llmcloud does not fetch; configure the provider to put "
            "the groups into the ID token or the userinfo response",
            user.id,
            user.role,
            profile.provider,
        )
        return None
    new_role = _mapped_role(user.role, frozenset(profile.groups), policy)
    if new_role == user.role:
        return None

    old_role = user.role
    if old_role == Role.ADMIN and is_last_active_admin(session, user):
        log.warning(
            "account %s stays admin although its %s groups give the role %s, because it is "
            "the last active admin; make another account admin first",
            user.id,
            profile.provider,
            new_role,
        )
        return RoleChange(old_role, new_role, applied=False)

    user.role = new_role
    if new_role == Role.PENDING:
        session.execute(sa.delete(UserSession).where(UserSession.user_id == user.id))
    log.info(
        "role of account %s changed from %s to %s by its %s groups",
        user.id,
        old_role,
        new_role,
        profile.provider,
    )
    return RoleChange(old_role, new_role, applied=True)


def _mapped_role(current: Role, groups: frozenset[str], policy: IdentityPolicy) -> Role:
    if groups & policy.admin_groups:
        return Role.ADMIN
    if current == Role.ADMIN and not policy.admin_groups:
        return Role.ADMIN
    if groups & policy.user_groups:
        return Role.USER
    if policy.user_groups:
        return policy.new_role
    return Role.USER if current == Role.ADMIN else current
