"""Recognising a database that rejects writes, and the advice for the operator.

SQLite opens a file read-only when the process may not write it (file mode,
owner, an immutable flag, a read-only mount), and every write on it then
fails with SQLITE_READONLY, "attempt to write a readonly database". On
PostgreSQL a hot standby, or a database or role that sets
default_transaction_read_only, fails every write with SQLSTATE 25006
(read_only_sql_transaction). `convert_read_only_error`, registered on every
engine by `open_database()`, replaces exactly these errors with
`DatabaseReadOnly`, which the web app turns into a 503 response, and logs
each one.
"""

from __future__ import annotations

import logging
import os
import pwd
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext

from llmcloud.db.errors import DatabaseReadOnly

log = logging.getLogger("llmcloud.db")

_POSTGRES_READ_ONLY_TRANSACTION = "25006"
_POSTGRES_LOCK_NOT_AVAILABLE = "55P03"


def is_read_only_error(error: BaseException) -> bool:
    """Return whether a driver's error means that the database rejects writes."""
    if isinstance(error, sqlite3.Error):
        # Extended result codes such as SQLITE_READONLY_CANTINIT keep the primary code in
        # the low byte.
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_READONLY
    return getattr(error, "sqlstate", None) == _POSTGRES_READ_ONLY_TRANSACTION


def is_lock_timeout(error: BaseException) -> bool:
    """Return whether a driver's error means that a lock held by another connection timed out."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return getattr(error, "sqlstate", None) == _POSTGRES_LOCK_NOT_AVAILABLE


def read_only_advice(url: sa.URL) -> str:
    """Return what an operator must change so that llmcloud may write the database at `url`."""
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        return (
            f"make {path}, its folder {path.parent} and its -wal and -shm files writable by "
            f"the user that runs llmcloud ({_user_name()}); lsattr shows an immutable flag, "
            "which chattr -i removes"
        )
    return (
        "connect to a writable primary server with a role that may write: check "
        "database_url, and that neither the database nor the role sets "
        "default_transaction_read_only"
    )


def convert_read_only_error(context: ExceptionContext) -> None:
    """Raise DatabaseReadOnly in place of a driver's error that means the database is read-only.

    A handler of SQLAlchemy's `handle_error` event. It logs one line per
    error, naming the database and the driver's message; other errors pass
    unchanged.
    """
    error = context.original_exception
    if context.engine is None or not is_read_only_error(error):
        return
    url = context.engine.url
    safe_url = url.render_as_string(hide_password=True)
    driver_message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    log.error("database %s rejected a write because it is read-only: %s", safe_url, driver_message)
    raise DatabaseReadOnly(safe_url, driver_message, read_only_advice(url)) from error


def _user_name() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
