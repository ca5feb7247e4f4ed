"""Secret keys shared by several web instances, and the check that they match.

Web instances behind one load balancer must sign session cookies with the
same key, or a user logged in through one instance is logged out by the
next. The key comes from the `session_secret_key` setting when it is set,
otherwise from `<data_dir>/secrets/session_key`, which is created on first
start.

Each instance records a fingerprint of its key in the database it shares
with the others: HMAC-SHA256 of a fixed label under the key, which reveals
nothing about the key itself. The first instance to start writes the
record. An instance whose key has another fingerprint refuses to start
with an error that names the setting to fix, so a mismatch is found at
start-up and not through users who are logged out at random.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from llmcloud.auth.secret_key import SESSION_KEY_NAME, load_or_create_secret_key
from llmcloud.db import Database
from llmcloud.db.models import KeyFingerprint
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.deploy")

_FINGERPRINT_LABEL = b"llmcloud key fingerprint v1"
_SHOWN_DIGITS = 12


class SharedKeyMismatchError(Exception):
    """This instance's secret key differs from the one recorded in the shared database."""


@dataclass(frozen=True)
class KeyRecord:
    name: str
    fingerprint: str
    recorded_at: str


def session_key(settings: Settings) -> bytes:
    """Return the session signing key: the setting when set, else the data dir's key file."""
    if settings.session_secret_key is not None:
        return bytes.fromhex(settings.session_secret_key.get_secret_value())
    return load_or_create_secret_key(settings.data_dir, SESSION_KEY_NAME)


def fingerprint(key: bytes) -> str:
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def check_session_key(database: Database, settings: Settings) -> None:
    """Record the session key's fingerprint, or raise SharedKeyMismatchError if it differs."""
    check_key(database, SESSION_KEY_NAME, session_key(settings))


def check_key(database: Database, name: str, key: bytes) -> None:
    """Compare the key with the database's record of `name`, writing the record when missing."""
    expected = fingerprint(key)
    record = _read_or_insert(database, name, expected)
    if hmac.compare_digest(record.fingerprint, expected):
        return
    log.error(
        "secret key %s differs from the one recorded in %s (recorded %s..., this one %s...)",
        name,
        database.safe_url,
        record.fingerprint[:_SHOWN_DIGITS],
        expected[:_SHOWN_DIGITS],
    )
    raise SharedKeyMismatchError(
        f"the secret key {name!r} of this instance (fingerprint {expected[:_SHOWN_DIGITS]}...) "
        f"differs from the one that the database {database.safe_url} recorded on "
        f"{record.recorded_at} (fingerprint {record.fingerprint[:_SHOWN_DIGITS]}...). Every "
        "web instance on one database must use the same key: set session_secret_key "
        "(LLMCLOUD_SESSION_SECRET_KEY) to the same value everywhere, or copy "
        f"<data_dir>/secrets/{name} from an instance that works"
    )


def read_record(database: Database, name: str) -> KeyRecord | None:
    with database.session() as session:
        row = session.get(KeyFingerprint, name)
    if row is None:
        return None
    return KeyRecord(name=row.name, fingerprint=row.fingerprint, recorded_at=row.recorded_at)


def _read_or_insert(database: Database, name: str, expected: str) -> KeyRecord:
    existing = read_record(database, name)
    if existing is not None:
        return existing

    record = KeyRecord(name=name, fingerprint=expected, recorded_at=datetime.now(UTC).isoformat())
    try:
        with database.transaction() as session:
            session.execute(
                sa.insert(KeyFingerprint).values(
                    name=record.name, fingerprint=record.fingerprint, recorded_at=record.recorded_at
                )
            )
    except IntegrityError:
        # Another instance starting at the same moment wrote its record first; compare with that.
        winner = read_record(database, name)
        assert winner is not None
        return winner
    log.info("recorded the fingerprint of secret key %s in %s", name, database.safe_url)
    return record
