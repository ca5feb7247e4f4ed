"""Local accounts: sign-up, log-in and the admin actions on users.

Roles are `admin`, `user` and `pending`. The first account ever created
becomes an admin, whatever the sign-up mode. Later sign-ups follow
`signup_mode`: `open` makes users, `approval` (the default) makes pending
accounts, `closed` rejects them. Every write that depends on the set of
accounts (the first-admin rule, the last-admin guard, unique usernames) runs
under one database lock, so concurrent sign-ups cannot create two admins,
even across processes on one PostgreSQL.

A pending or deactivated account cannot log in. `authenticate()` checks the
password first and only then raises `AccountPending` or
`AccountDeactivated`, so that only the owner learns the account's state.
The web layer shows the waiting-for-approval page on `AccountPending` and
after a sign-up that returned a pending account. Such an account has no
session, because `llmcloud.auth.sessions` rejects creating or using one.

Logins take about the same time for unknown users, users without a password
and wrong passwords, because each path runs one argon2 verification.
Functions return detached `User` objects: their columns are readable, but
changing them saves nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmcloud.auth import api_key_cache
from llmcloud.auth.errors import (
    AccountDeactivated,
    AccountPending,
    Conflict,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    SignupClosed,
)
from llmcloud.auth.passwords import (
    DEFAULT_HASHER,
    MAX_PASSWORD_LENGTH,
    check_password_policy,
    hash_password,
    needs_rehash,
    spend_verification_time,
    verify_password,
)
from llmcloud.db.database import Database
from llmcloud.db.errors import quote_value
from llmcloud.db.models import Role, User, UserSession, utcnow

log = logging.getLogger("llmcloud.auth")

SignupMode = Literal["open", "approval", "closed"]
ACCOUNTS_LOCK = "llmcloud.auth.accounts"
MIN_USERNAME_LENGTH = 3
MAX_USERNAME_LENGTH = 64
MAX_EMAIL_LENGTH = 320
_USERNAME_CHARACTERS = re.compile(r"[A-Za-z0-9._-]")
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+")
_SIGNUP_CLOSED = "sign-up is closed on this server; ask an admin to create an account"


def validate_username(username: str) -> str:
    """Return the username if it is 3 to 64 ASCII letters, digits, `.`, `_` or `-`."""
    length = len(username)
    if not MIN_USERNAME_LENGTH <= length <= MAX_USERNAME_LENGTH:
        raise InvalidInput(
            f"username {quote_value(username)} has {length} characters; "
            f"expected {MIN_USERNAME_LENGTH} to {MAX_USERNAME_LENGTH}"
        )
    bad = sorted({char for char in username if not _USERNAME_CHARACTERS.fullmatch(char)})
    if bad:
        listed = " ".join(repr(char) for char in bad)
        raise InvalidInput(
            f"username {quote_value(username)} contains {listed}; use only letters a-z and A-Z, "
            "digits, '.', '_' and '-'"
        )
    return username


def validate_email(email: str | None) -> str | None:
    """Return the address stripped, or None for an empty one."""
    if email is None or not email.strip():
        return None
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL_SHAPE.fullmatch(email):
        raise InvalidInput(
            f"email address {quote_value(email)} is invalid; expected the form name@example.org, "
            f"at most {MAX_EMAIL_LENGTH} characters"
        )
    return email


def sign_up(
    db: Database,
    username: str,
    password: str,
    *,
    signup_mode: SignupMode = "approval",
    email: str | None = None,
    hasher: PasswordHasher = DEFAULT_HASHER,
) -> User:
    """Create an account through the public sign-up form and return it.

    The role is `admin` for the first account, otherwise `user` when
    `signup_mode` is `open` and `pending` when it is `approval`. Raises
    InvalidInput for a bad username, password or email, Conflict for a taken
    username, and SignupClosed in `closed` mode once an account exists.
    """
    validate_username(username)
    check_password_policy(password, username=username)
    email = validate_email(email)
    if signup_mode == "closed" and _count_users(db) > 0:
        raise SignupClosed(_SIGNUP_CLOSED)

    password_hash = hash_password(password, hasher)
    with _account_writes(db) as session:
        if session.scalar(sa.select(sa.func.count()).select_from(User)) == 0:
            role = Role.ADMIN
        elif signup_mode == "closed":
            raise SignupClosed(_SIGNUP_CLOSED)
        elif signup_mode == "open":
            role = Role.USER
        else:
            role = Role.PENDING
        user = _insert_user(session, username, email, password_hash, role)
        if role != Role.PENDING:
            # The sign-up form logs such an account in at once.
            user.last_login_at = utcnow()
    log.info("account %s (%s) signed up with role %s", user.id, user.username, user.role)
    return user


def create_account(
    db: Database,
    username: str,
    password: str | None,
    *,
    role: Role | str = Role.USER,
    email: str | None = None,
    hasher: PasswordHasher = DEFAULT_HASHER,
) -> User:
    """Create an account with the given role, for admins and the command line.

    `password` None makes an account that can only log in through an
    identity provider. Sign-up mode does not apply.
    """
    validate_username(username)
    if password is not None:
        check_password_policy(password, username=username)
    email = validate_email(email)
    role = _parse_role(role)

    password_hash = None if password is None else hash_password(password, hasher)
    with _account_writes(db) as session:
        user = _insert_user(session, username, email, password_hash, role)
    log.info("account %s (%s) created with role %s", user.id, user.username, user.role)
    return user


def authenticate(
    db: Database, username: str, password: str, *, hasher: PasswordHasher = DEFAULT_HASHER
) -> User:
    """Check a username and password and return the account, for logging in.

    Raises InvalidCredentials for an unknown user or a wrong password (one
    message for both), then AccountDeactivated or AccountPending for an
    account that may not log in. Records the login time and rehashes the
    password when the hasher's parameters changed.
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password is too long: {len(password)} characters, "
            f"expected at most {MAX_PASSWORD_LENGTH}"
        )
    with db.session() as session:
        user = _find_by_username(session, username)

    if user is None or user.password_hash is None:
        spend_verification_time(password, hasher)
        log.info("login failed: unknown username or account without a password")
        raise InvalidCredentials("invalid username or password")
    if not verify_password(user.password_hash, password, hasher):
        log.info("login failed for account %s: wrong password", user.id)
        raise InvalidCredentials("invalid username or password")
    check_can_log_in(user)

    new_hash = hash_password(password, hasher) if needs_rehash(user.password_hash, hasher) else None
    with db.transaction() as session:
        stored = session.get(User, user.id)
        if stored is None:
            raise InvalidCredentials("invalid username or password")
        stored.last_login_at = utcnow()
        if new_hash is not None:
            stored.password_hash = new_hash
            log.info("password hash of account %s upgraded to new parameters", user.id)
    log.info("account %s logged in", user.id)
    return stored


def check_can_log_in(user: User) -> None:
    """Raise AccountDeactivated or AccountPending unless the account may log in."""
    if not user.is_active:
        raise AccountDeactivated(
            f"account {quote_value(user.username)} is deactivated; ask an admin to reactivate it"
        )
    if user.role == Role.PENDING:
        raise AccountPending(
            f"account {quote_value(user.username)} is waiting for an admin's approval; "
            "log in again once it is approved"
        )


def get_account(db: Database, user_id: int) -> User:
    with db.session() as session:
        return _get(session, user_id)


def find_account(db: Database, username: str) -> User | None:
    """Return the account with this username, compared case-insensitively."""
    with db.session() as session:
        return _find_by_username(session, username)


def list_accounts(db: Database, *, role: Role | None = None) -> Sequence[User]:
    """Return the accounts, oldest first, optionally only those with `role`."""
    query = sa.select(User).order_by(User.id)
    if role is not None:
        query = query.where(User.role == role)
    with db.session() as session:
        return session.scalars(query).all()


def approve(db: Database, user_id: int) -> User:
    """Make a pending account a user. Raises Conflict when it is not pending."""
    with _account_writes(db) as session:
        user = _get(session, user_id)
        if user.role != Role.PENDING:
            raise Conflict(
                f"account {quote_value(user.username)} is not pending approval (role {user.role})"
            )
        user.role = Role.USER
    log.info("account %s approved", user_id)
    return user


def set_role(db: Database, user_id: int, role: Role | str) -> User:
    """Change an account's role. Making it pending also logs it out everywhere.

    Raises InvalidInput for an unknown role and Conflict when the change would
    leave no active admin.
    """
    new_role = _parse_role(role)
    with _account_writes(db) as session:
        user = _get(session, user_id)
        if new_role != Role.ADMIN:
            _check_not_last_admin(session, user, "change the role of")
        user.role = new_role
        if new_role == Role.PENDING:
            _delete_sessions(session, user_id)
    log.info("account %s role set to %s", user_id, new_role)
    return user


def deactivate(db: Database, user_id: int) -> User:
    """Block an account: its sessions are deleted and its API keys stop working.

    Reactivating the account makes its API keys work again. Raises Conflict
    for the only active admin.
    """
    with _account_writes(db) as session:
        user = _get(session, user_id)
        if user.is_active:
            _check_not_last_admin(session, user, "deactivate")
            user.deactivated_at = utcnow()
        _delete_sessions(session, user_id)
    log.info("account %s deactivated", user_id)
    return user


def reactivate(db: Database, user_id: int) -> User:
    with _account_writes(db) as session:
        user = _get(session, user_id)
        user.deactivated_at = None
    log.info("account %s reactivated", user_id)
    return user


def delete_account(db: Database, user_id: int) -> None:
    """Delete an account with its sessions, API keys, chats and identities.

    Audit events stay, without the actor. Raises Conflict for the only active admin.
    """
    with _account_writes(db) as session:
        user = _get(session, user_id)
        _check_not_last_admin(session, user, "delete")
        session.execute(sa.delete(User).where(User.id == user_id))
    log.info("account %s (%s) deleted", user_id, user.username)


@contextmanager
def _account_writes(db: Database) -> Iterator[Session]:
    """Open a write transaction that holds the accounts lock.

    A lost race on the unique username index, which the lock should prevent,
    still ends as Conflict rather than a database error.
    """
    try:
        with db.transaction() as session:
            db.lock(session, ACCOUNTS_LOCK)
            yield session
    except IntegrityError as exc:
        raise Conflict(
            "username is already taken by an account created at the same time; choose another"
        ) from exc
    # A committed change of an account's role or state applies to its API keys at once.
    api_key_cache.invalidate()


def _insert_user(
    session: Session, username: str, email: str | None, password_hash: str | None, role: Role
) -> User:
    if _find_by_username(session, username) is not None:
        raise Conflict(f"username {quote_value(username)} is already taken; choose another")
    user = User(username=username, email=email, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user


def _find_by_username(session: Session, username: str) -> User | None:
    # Stored usernames are ASCII; this also keeps characters such as the Kelvin
    # sign, which Python lowers to an ASCII "k", from matching.
    if len(username) > MAX_USERNAME_LENGTH or not username.isascii():
        return None
    query = sa.select(User).where(sa.func.lower(User.username) == username.lower())
    return session.scalars(query).one_or_none()


def _get(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"account {user_id} not found")
    return user


def _count_users(db: Database) -> int:
    with db.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(User)) or 0


def _parse_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        choices = ", ".join(member.value for member in Role)
        message = f"role {quote_value(str(role))} is unknown; expected one of: {choices}"
        raise InvalidInput(message) from None


def is_last_active_admin(session: Session, user: User) -> bool:
    """Return whether `user` is the only active admin. Callers hold ACCOUNTS_LOCK."""
    if user.role != Role.ADMIN or not user.is_active:
        return False
    active_admins = session.scalar(
        sa.select(sa.func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN, User.deactivated_at.is_(None))
    )
    return (active_admins or 0) <= 1


def _check_not_last_admin(session: Session, user: User, action: str) -> None:
    if is_last_active_admin(session, user):
        raise Conflict(
            f"cannot {action} {quote_value(user.username)}, the only active admin; "
            "make another account admin first"
        )


def _delete_sessions(session: Session, user_id: int) -> None:
    session.execute(sa.delete(UserSession).where(UserSession.user_id == user_id))
