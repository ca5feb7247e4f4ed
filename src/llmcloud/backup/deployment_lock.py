"""A lock shared by every web instance of a deployment, so that a scheduled run happens once.

Each `llmcloud web` instance schedules the same backup and verify jobs.
Before a scheduled run, an instance takes a lock that all of them share: a
PostgreSQL session-level advisory lock when the database is PostgreSQL, else
a Redis lock when redis_url is set. An instance that finds the lock held
skips the run. Without either, instances share no state and the data dir's
lock file (see run.backup_lock) is the only lock; SQLite serves one machine,
so that is one deployment with one scheduler.

The Redis lock expires after LOCK_TTL_SECONDS unless the holder renews it,
so a killed holder blocks scheduled runs for at most that long. The
PostgreSQL lock ends with the holder's connection.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import psycopg
import redis
from redis.exceptions import LockError, RedisError
from sqlalchemy.engine import make_url

from llmcloud.backup.errors import BackupError
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

LOCK_TTL_SECONDS = 60.0
KEY_PREFIX = "llmcloud:backup-lock:"

LockKind = Literal["postgresql", "redis", "none"]


def lock_kind(settings: Settings) -> LockKind:
    """Return which shared lock the settings give: PostgreSQL first, then Redis."""
    if settings.database_url is not None:
        url = make_url(settings.database_url.get_secret_value())
        if url.get_backend_name() == "postgresql":
            return "postgresql"
    if settings.redis_url is not None:
        return "redis"
    return "none"


@contextmanager
def deployment_lock(settings: Settings, job: str) -> Iterator[bool]:
    """Hold the deployment-wide lock of `job` while the block runs.

    Yields False, without waiting, when another instance holds it; yields
    True when this instance holds it or when there is no shared lock to take.
    Raises BackupError when the database or Redis cannot be reached.
    """
    key_prefix = KEY_PREFIX
    kind = lock_kind(settings)
    if kind == "postgresql":
        assert settings.database_url is not None
        with _postgres_lock(settings.database_url.get_secret_value(), key_prefix + job) as held:
            yield held
    elif kind == "redis":
        assert settings.redis_url is not None
        with _redis_lock(settings.redis_url.get_secret_value(), key_prefix + job) as held:
            yield held
    else:
        yield True


def advisory_lock_id(name: str) -> int:
    """Return a signed 64-bit id for pg_advisory_lock, derived from the lock's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _postgres_lock(database_url: str, name: str) -> Iterator[bool]:
    conninfo = make_url(database_url).set(drivername="postgresql")
    lock_id = advisory_lock_id(name)
    try:
        connection = psycopg.connect(
            conninfo.render_as_string(hide_password=False), autocommit=True
        )
    except psycopg.Error as exc:
        raise BackupError(
            f"cannot take the backup lock {name!r} in PostgreSQL: {exc}; check database_url"
        ) from None
    with connection:
        row = connection.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()
        held = bool(row and row[0])
        try:
            yield held
        finally:
            if held:
                connection.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))


@contextmanager
def _redis_lock(redis_url: str, name: str) -> Iterator[bool]:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    lock = client.lock(name, timeout=LOCK_TTL_SECONDS, blocking=False, thread_local=False)
    try:
        held = bool(lock.acquire(blocking=False))
    except RedisError as exc:
        client.close()
        raise BackupError(
            f"cannot take the backup lock {name!r} in Redis: {exc}; check redis_url"
        ) from None

    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lock, stop), name="llmcloud-backup-lock", daemon=True
    )
    if held:
        renewer.start()
    try:
        yield held
    finally:
        stop.set()
        if held:
            renewer.join()
            try:
                lock.release()
            except (LockError, RedisError) as exc:
                log.warning("backup lock %s could not be released: %s", name, exc)
        client.close()


def _renew(lock: redis.lock.Lock, stop: threading.Event) -> None:
    while not stop.wait(LOCK_TTL_SECONDS / 3):
        try:
            lock.reacquire()
        except (LockError, RedisError) as exc:
            log.warning("backup lock %s could not be renewed: %s", lock.name, exc)
