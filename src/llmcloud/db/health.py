"""Readiness checks of the database, for `/readyz`: it is reachable and accepts writes."""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from llmcloud.db.database import Database
from llmcloud.db.errors import DatabaseReadOnly
from llmcloud.db.read_only import is_lock_timeout

log = logging.getLogger("llmcloud.db")

# The write check takes SQLite's single write lock, and /readyz is polled every few seconds
# by each load balancer and monitor. So its result is reused for WRITE_CHECK_INTERVAL_SECONDS,
# and it waits at most WRITE_CHECK_LOCK_TIMEOUT_SECONDS for a lock that a real write holds,
# instead of delaying that write or the probe by up to the 30 s busy timeout.
WRITE_CHECK_INTERVAL_SECONDS = 10.0
WRITE_CHECK_LOCK_TIMEOUT_SECONDS = 0.1


@dataclass(frozen=True)
class _WriteCheck:
    checked_at: float
    problem: str | None


_write_checks: weakref.WeakKeyDictionary[Database, _WriteCheck] = weakref.WeakKeyDictionary()


def database_problem(db: Database) -> str | None:
    """Return None when the database runs `SELECT 1` and accepts writes, else the problem."""
    try:
        with db.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("database %s is not reachable: %s", db.safe_url, exc)
        return f"database {db.safe_url} is not reachable: {type(exc).__name__}"
    return write_problem(db)


def write_problem(db: Database) -> str | None:
    """Return why the database rejects writes, or None when it accepts them.

    Runs `Database.check_writable()` when the last result is older than
    WRITE_CHECK_INTERVAL_SECONDS, and returns the last result otherwise. Probes
    that arrive at the same moment may each run the check.
    """
    now = time.monotonic()
    last = _write_checks.get(db)
    if last is not None and now - last.checked_at < WRITE_CHECK_INTERVAL_SECONDS:
        return last.problem

    try:
        db.check_writable(lock_timeout=WRITE_CHECK_LOCK_TIMEOUT_SECONDS)
        problem = None
    except DatabaseReadOnly as exc:
        problem = f"database {exc.safe_url} is read-only: {exc.driver_message}"
    except SQLAlchemyError as exc:
        if isinstance(exc, OperationalError) and is_lock_timeout(exc.orig or exc):
            # Another connection has the lock, which shows nothing about this one's writes,
            # so the last result is returned and the next probe checks again.
            return last.problem if last is not None else None
        log.warning("database %s failed the write check: %s", db.safe_url, exc)
        problem = f"database {db.safe_url} failed the write check: {type(exc).__name__}"
    _write_checks[db] = _WriteCheck(now, problem)
    return problem
