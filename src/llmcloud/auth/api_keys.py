"""API keys for the OpenAI-compatible API.

A key is `llmc_` followed by 32 random bytes in URL-safe base64 (48
characters in all). It is returned once, at creation. The database stores
its SHA-256 and the first 13 characters (`llmc_` and 8 more) for lists. A
fast hash is enough here, unlike for passwords, because 256 random bits
cannot be guessed offline.

A key works while it is not revoked and its account may log in: keys of a
pending or deactivated account fail with 403, and work again when the
account is approved or reactivated. `last_used_at` is written at most once
a minute per key.

Keys that passed the check are cached in this process for a few seconds
(`llmcloud.auth.api_key_cache`, which says how revocation reaches the cache),
so that most requests take no database query. A cached key whose use is due
to be recorded is still served from the cache: the caller records it with a
check in the background (`CachedAccount.check_due`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from llmcloud.auth import api_key_cache
from llmcloud.auth.accounts import check_can_log_in
from llmcloud.auth.errors import (
    Conflict,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    ServiceError,
)
from llmcloud.db.database import Database
from llmcloud.db.errors import quote_value
from llmcloud.db.models import ApiKey, User, utcnow

log = logging.getLogger("llmcloud.auth")

KEY_PREFIX = "llmc_"
KEY_BYTES = 32
KEY_LENGTH = len(KEY_PREFIX) + 43
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 8
MAX_NAME_LENGTH = 64
MAX_ACTIVE_KEYS_PER_USER = 50
USE_RECORD_INTERVAL = timedelta(seconds=60)
_INVALID_KEY = (
    "invalid API key; send 'Authorization: Bearer llmc_...' with a key from the API keys page"
)


@dataclass(frozen=True)
class NewApiKey:
    """A key just created. `key` is the only copy of the full key; show it once."""

    key: str
    record: ApiKey


def create_api_key(db: Database, user_id: int, name: str) -> NewApiKey:
    """Create a key named `name` for an account that may log in.

    Raises InvalidInput for a bad name, Conflict when the account already has
    the maximum number of active keys or an active key of that name, and
    NotFound, AccountPending or AccountDeactivated for the account.
    """
    name = _validate_name(name)
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    record = ApiKey(
        user_id=user_id, name=name, prefix=key[:SHOWN_PREFIX_LENGTH], key_hash=hash_key(key)
    )

    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"account {user_id} not found")
        check_can_log_in(user)
        active = session.scalar(
            sa.select(sa.func.count())
            .select_from(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
        if (active or 0) >= MAX_ACTIVE_KEYS_PER_USER:
            raise Conflict(
                f"account already has {MAX_ACTIVE_KEYS_PER_USER} active API keys, the maximum; "
                "revoke one first"
            )
        # One active key per name, which also keeps a resent form from making a second key.
        same_name = session.scalar(
            sa.select(ApiKey.id).where(
                ApiKey.user_id == user_id, ApiKey.name == name, ApiKey.revoked_at.is_(None)
            )
        )
        if same_name is not None:
            raise Conflict(
                f"an active API key named {quote_value(name)} already exists; pick another "
                "name, or revoke that key first"
            )
        session.add(record)
    log.info("API key %s (%s) created for account %s", record.id, record.prefix, user_id)
    return NewApiKey(key=key, record=record)


def list_api_keys(db: Database, user_id: int) -> Sequence[ApiKey]:
    """Return the account's keys, revoked ones included, newest first."""
    query = sa.select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc())
    with db.session() as session:
        return session.scalars(query).all()


def revoke_api_key(db: Database, user_id: int, key_id: int) -> ApiKey:
    """Revoke one of the account's keys. Revoking a revoked key changes nothing.

    Raises NotFound for an unknown key and for another account's key alike.
    """
    with db.transaction() as session:
        record = session.scalars(
            sa.select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
        ).one_or_none()
        if record is None:
            raise NotFound(f"API key {key_id} not found")
        if record.revoked_at is None:
            record.revoked_at = utcnow()
    api_key_cache.invalidate()
    log.info("API key %s (%s) of account %s revoked", key_id, record.prefix, user_id)
    return record


def authenticate_bearer(db: Database, authorization: str | None, *, renew: bool = False) -> User:
    """Return the account of an `Authorization: Bearer <key>` header value.

    With `renew`, the key is read from the database even when it is cached,
    and its entry replaced; see `authenticate_api_key()`.
    """
    key = _bearer_key(authorization) if authorization else ""
    if key == "":
        raise InvalidCredentials(
            "missing API key; send the header 'Authorization: Bearer llmc_...'"
        )
    if key is None:
        raise InvalidCredentials(_INVALID_KEY)
    return authenticate_api_key(db, key, renew=renew)


@dataclass(frozen=True, slots=True)
class CachedAccount:
    """The account of a key found in the cache."""

    user: User
    check_due: bool
    """True when the key should be checked again (`authenticate_bearer(..., renew=True)`)
    after this request: its cache entry is past half its life, or its use is due to be
    recorded."""


def cached_bearer_account(
    db: Database, authorization: str | None, *, now: datetime | None = None
) -> CachedAccount | None:
    """Return the account of a Bearer header value from the cache, or None to ask the database.

    It never touches the database, so it may run on the event loop. None
    comes for every key that is not cached, and for a missing or malformed
    header, for which `authenticate_bearer()` raises the error.
    """
    key = _bearer_key(authorization) if authorization else None
    if key is None or not _well_formed(key):
        return None
    entry = api_key_cache.lookup(db, hash_key(key))
    if entry is None:
        return None
    check_due = time.monotonic() >= entry.renew_after or _use_is_due(
        entry.last_used_at, now or utcnow()
    )
    return CachedAccount(entry.user, check_due)


def authenticate_api_key(
    db: Database, key: str, *, now: datetime | None = None, renew: bool = False
) -> User:
    """Return the account a key belongs to, recording the key's use.

    Raises InvalidCredentials for a malformed, unknown or revoked key, and
    AccountPending or AccountDeactivated when the account may not log in.
    A cached key is checked in the database only with `renew`. A key that
    fails the check loses its cache entry.
    """
    if not _well_formed(key):
        raise InvalidCredentials(_INVALID_KEY)
    now = now or utcnow()
    key_hash = hash_key(key)
    entry = None if renew else api_key_cache.lookup(db, key_hash)
    if entry is not None:
        if _use_is_due(entry.last_used_at, now):
            _record_use(db, entry.key_id, now)
            entry.last_used_at = now
        return entry.user

    generation = api_key_cache.generation()
    query = sa.select(ApiKey, User).join(User, User.id == ApiKey.user_id)
    with db.session() as session:
        row = session.execute(query.where(ApiKey.key_hash == key_hash)).one_or_none()
    try:
        if row is None:
            log.info("API key rejected: unknown")
            raise InvalidCredentials(_INVALID_KEY)
        record, user = row
        if record.revoked_at is not None:
            log.info("API key %s (%s) rejected: revoked", record.id, record.prefix)
            raise InvalidCredentials(
                f"API key {record.prefix}... was revoked; create a new one on the API keys page"
            )
        check_can_log_in(user)
    except ServiceError:
        api_key_cache.forget(db, key_hash)
        raise

    last_used_at = record.last_used_at
    if _use_is_due(last_used_at, now):
        _record_use(db, record.id, now)
        last_used_at = now
    api_key_cache.store(db, key_hash, user, record.id, last_used_at, generation)
    return user


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer_key(authorization: str) -> str | None:
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip()


def _well_formed(key: str) -> bool:
    return len(key) == KEY_LENGTH and key.startswith(KEY_PREFIX)


def _use_is_due(last_used_at: datetime | None, now: datetime) -> bool:
    return last_used_at is None or now - last_used_at >= USE_RECORD_INTERVAL


def _validate_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise InvalidInput(
            f"API key name {quote_value(name)} has {len(name)} characters; "
            f"expected 1 to {MAX_NAME_LENGTH}"
        )
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise InvalidInput(
            f"API key name {quote_value(name)} contains control characters; use printable text"
        )
    return name


def _record_use(db: Database, key_id: int, now: datetime) -> None:
    with db.transaction() as session:
        session.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
