"""A lock shared by every web instance of a deployment, so that backups do not race.

Each `llmcloud web` instance schedules the same backup and verify jobs.
Before a scheduled run, an instance takes a lock that all of them share: a
PostgreSQL session-level advisory lock when the database is PostgreSQL, else
a Redis lock when redis_url is set. An instance that finds the lock held
skips the scheduled run. A manual `llmcloud backup run`, `verify` or `prune`,
and the backup and migration at start-up, take the same lock through
`wait_for_deployment_lock` instead, which waits for it up to
backup_deployment_lock_timeout and then fails naming the holder. Without
PostgreSQL or Redis, instances share no state and the data dir's lock file
(see run.backup_lock) is the only lock; SQLite serves one machine, so that
is one deployment with one scheduler.

The holder is named by the PostgreSQL connection's application_name, or by
the Redis lock's token, both of which carry the host name and process id.

The Redis lock expires after LOCK_TTL_SECONDS unless the holder renews it,
so a killed holder blocks scheduled runs for at most that long. The
PostgreSQL lock ends with the holder's connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import psycopg
import redis
from redis.exceptions import LockError, RedisError
from sqlalchemy.engine import make_url

from llmcloud.backup.errors import BackupBusy, BackupError
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

LOCK_TTL_SECONDS = 60.0
KEY_PREFIX = "llmcloud:backup-lock:"
# Seconds between two attempts to take the PostgreSQL lock while waiting for it.
POLL_SECONDS = 0.5
UNKNOWN_HOLDER = "another instance (its name is not visible to this one)"

LockKind = Literal["postgresql", "redis", "none"]


@dataclass(frozen=True)
class LockState:
    """Whether this process holds the lock, and who does when another process holds it."""

    held: bool
    holder: str | None = None


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
    with _shared_lock(settings, job, wait_seconds=0.0) as state:
        yield state.held


@contextmanager
def wait_for_deployment_lock(settings: Settings, job: str, purpose: str) -> Iterator[None]:
    """Hold the deployment-wide lock of `job`, waiting for another holder to release it.

    Waits up to backup_deployment_lock_timeout seconds, then raises
    BackupBusy naming the holder and `purpose` (such as "the manual backup").
    Raises BackupError when the database or Redis cannot be reached.
    """
    timeout = settings.backup_deployment_lock_timeout
    with _shared_lock(settings, job, wait_seconds=timeout) as state:
        if not state.held:
            raise BackupBusy(
                f"{purpose} did not start: the backup lock {job!r} is still held by "
                f"{state.holder or UNKNOWN_HOLDER} after {timeout:g} s of waiting; run it again "
                "when that run has finished, or raise backup_deployment_lock_timeout"
            )
        yield


@contextmanager
def _shared_lock(settings: Settings, job: str, wait_seconds: float) -> Iterator[LockState]:
    kind = lock_kind(settings)
    name = KEY_PREFIX + job
    if kind == "postgresql":
        assert settings.database_url is not None
        url = settings.database_url.get_secret_value()
        with _postgres_lock(url, name, wait_seconds) as state:
            yield state
    elif kind == "redis":
        assert settings.redis_url is not None
        with _redis_lock(settings.redis_url.get_secret_value(), name, wait_seconds) as state:
            yield state
    else:
        yield LockState(held=True)


def advisory_lock_id(name: str) -> int:
    """Return a signed 64-bit id for pg_advisory_lock, derived from the lock's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def process_label() -> str:
    """Return the host name and process id that name this process as a lock holder."""
    return f"llmcloud on {socket.gethostname()} pid {os.getpid()}"


@contextmanager
def _postgres_lock(database_url: str, name: str, wait_seconds: float) -> Iterator[LockState]:
    conninfo = make_url(database_url).set(drivername="postgresql")
    lock_id = advisory_lock_id(name)
    try:
        connection = psycopg.connect(
            conninfo.render_as_string(hide_password=False),
            autocommit=True,
            # PostgreSQL keeps at most 63 bytes of it, which is enough to name the holder.
            application_name=process_label()[:63],
        )
    except psycopg.Error as exc:
        raise BackupError(
            f"cannot take the backup lock {name!r} in PostgreSQL: {exc}; check database_url"
        ) from None
    with connection:
        held = _try_advisory_lock(connection, lock_id)
        holder = None if held else _postgres_holder(connection, lock_id)
        if not held and wait_seconds > 0:
            _log_waiting(name, holder, wait_seconds)
            deadline = time.monotonic() + wait_seconds
            while not held and time.monotonic() < deadline:
                time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
                held = _try_advisory_lock(connection, lock_id)
            holder = None if held else _postgres_holder(connection, lock_id)
        try:
            yield LockState(held, holder)
        finally:
            if held:
                connection.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))


def _try_advisory_lock(connection: psycopg.Connection[tuple[object, ...]], lock_id: int) -> bool:
    row = connection.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()
    return bool(row and row[0])


def _postgres_holder(
    connection: psycopg.Connection[tuple[object, ...]], lock_id: int
) -> str | None:
    """Return the application name and start of the session that holds the advisory lock.

    pg_locks shows a bigint advisory key as classid (high 32 bits) and objid
    (low 32 bits) with objsubid 1. pg_stat_activity hides other roles'
    sessions from a role without pg_read_all_stats, so the result may be None.
    """
    unsigned = lock_id & 0xFFFF_FFFF_FFFF_FFFF
    row = connection.execute(
        "SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFF_FFFF),
    ).fetchone()
    if row is None:
        return None
    application_name, pid, started = row
    who = application_name or f"PostgreSQL session {pid}"
    if isinstance(started, datetime):
        return f"{who} (since {started.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
    return str(who)


@contextmanager
def _redis_lock(redis_url: str, name: str, wait_seconds: float) -> Iterator[LockState]:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    lock = client.lock(name, timeout=LOCK_TTL_SECONDS, blocking=False, thread_local=False)
    # The token is the lock's value in Redis, so a waiter can read who holds the lock.
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    token = f"{process_label()} (since {since} UTC)#{secrets.token_hex(8)}"
    try:
        held = bool(lock.acquire(blocking=False, token=token))
        holder = None if held else _redis_holder(client, name)
        if not held and wait_seconds > 0:
            _log_waiting(name, holder, wait_seconds)
            held = bool(lock.acquire(blocking=True, blocking_timeout=wait_seconds, token=token))
            holder = None if held else _redis_holder(client, name)
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
        yield LockState(held, holder)
    finally:
        stop.set()
        if held:
            renewer.join()
            try:
                lock.release()
            except (LockError, RedisError) as exc:
                log.warning("backup lock %s could not be released: %s", name, exc)
        client.close()


def _redis_holder(client: redis.Redis, name: str) -> str | None:
    value = client.get(name)
    if not isinstance(value, bytes):
        return None
    return value.decode(errors="replace").rpartition("#")[0] or None


def _log_waiting(name: str, holder: str | None, wait_seconds: float) -> None:
    log.warning(
        "backup lock %s is held by %s; waiting up to %g s for it",
        name,
        holder or UNKNOWN_HOLDER,
        wait_seconds,
    )


def _renew(lock: redis.lock.Lock, stop: threading.Event) -> None:
    while not stop.wait(LOCK_TTL_SECONDS / 3):
        try:
            lock.reacquire()
        except (LockError, RedisError) as exc:
            log.warning("backup lock %s could not be renewed: %s", lock.name, exc)
