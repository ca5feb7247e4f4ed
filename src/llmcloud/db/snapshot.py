"""Consistent snapshots of the database, and loading one back, for backups.

SQLite is copied with its online backup API in a single step, which reads
one consistent state of the file while writers go on (WAL mode lets them).
PostgreSQL is dumped with `pg_dump` in custom format; the row counts are
taken in the same exported snapshot that `pg_dump --snapshot` reads, so the
counts describe exactly the rows in the dump.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from llmcloud.db.database import Database
from llmcloud.db.errors import ServiceError

log = logging.getLogger("llmcloud.db")

SnapshotKind = Literal["sqlite", "pg_dump"]
SQLITE_SNAPSHOT_FILE = "llmcloud.db"
PG_DUMP_FILE = "llmcloud.pgdump"


class SnapshotError(ServiceError):
    """The database could not be copied or loaded: locked too long, or a tool failed."""

    status_code = 503


@dataclass(frozen=True)
class Snapshot:
    path: Path
    kind: SnapshotKind
    revision: str | None
    row_counts: dict[str, int]


def snapshot_database(database: Database, folder: Path, *, timeout: float = 30.0) -> Snapshot:
    """Write a consistent copy of the database into `folder` and count its rows.

    A lock held longer than `timeout` seconds by another connection makes the
    copy fail with SnapshotError; the database itself is never changed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if database.dialect == "sqlite":
        return _snapshot_sqlite(database, folder / SQLITE_SNAPSHOT_FILE, timeout)
    return _snapshot_postgres(database, folder / PG_DUMP_FILE, timeout)


def restore_snapshot(snapshot_file: Path, kind: SnapshotKind, database_url: str) -> None:
    """Load a snapshot into the database at `database_url`, replacing its tables.

    A SQLite snapshot file is moved into place when it is on the same filesystem,
    so the caller must not need it afterwards.
    """
    if kind == "sqlite":
        target = make_url(database_url).database
        if not target:
            raise SnapshotError(f"cannot restore a SQLite snapshot into {database_url!r}")
        _copy_sqlite_file(snapshot_file, Path(target))
        return
    _run_tool(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            _libpq_url(database_url),
            str(snapshot_file),
        ],
        database_url,
        timeout=None,
    )


def count_rows(database: Database) -> dict[str, int]:
    """Return the number of rows in each table, by table name."""
    with database.engine.connect() as connection:
        return _count_tables(connection)


def sqlite_integrity_check(path: Path) -> str:
    """Run SQLite's integrity_check on the file; returns 'ok' or the first problem found."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = connection.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        connection.close()
    return str(row[0]) if row else "no result"


def sqlite_row_counts(path: Path) -> dict[str, int]:
    database_url = f"sqlite:///{path}"
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return _count_tables(connection)
    finally:
        engine.dispose()


def _snapshot_sqlite(database: Database, target: Path, timeout: float) -> Snapshot:
    source_path = database.engine.url.database
    assert source_path is not None
    target.unlink(missing_ok=True)
    source = sqlite3.connect(source_path, timeout=timeout)
    copy = sqlite3.connect(target)
    # The copy is scratch until the archive that contains it is fsynced, so it skips the journal
    # and the fsyncs that would make it durable on its own.
    copy.execute("PRAGMA journal_mode=OFF")
    copy.execute("PRAGMA synchronous=OFF")
    deadline = time.monotonic() + timeout

    def give_up_when_locked_too_long(status: int, remaining: int, total: int) -> None:
        # sqlite3's backup() retries a locked source forever; this callback ends that.
        locked = status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        if locked and time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked")

    try:
        # pages=-1 copies every page in one step, under one read transaction.
        source.backup(copy, pages=-1, progress=give_up_when_locked_too_long, sleep=0.05)
    except sqlite3.OperationalError as exc:
        raise SnapshotError(
            f"cannot copy the SQLite database {source_path}: {exc} (waited up to {timeout:g} s "
            "for a lock held by another connection); try again when the long write has finished"
        ) from None
    finally:
        copy.close()
        source.close()

    revision = _sqlite_revision(target)
    return Snapshot(target, "sqlite", revision, sqlite_row_counts(target))


def _sqlite_revision(path: Path) -> str | None:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        connection.close()
    return str(row[0]) if row else None


def _copy_sqlite_file(snapshot_file: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    temporary = target.with_name(f".{target.name}.restoring")
    try:
        # Moving is much faster than copying a large file; the snapshot is not needed after.
        os.replace(snapshot_file, temporary)
    except OSError:
        shutil.copyfile(snapshot_file, temporary)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def _snapshot_postgres(database: Database, target: Path, timeout: float) -> Snapshot:
    url = database.engine.url.render_as_string(hide_password=False)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_id = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        row_counts = _count_tables(connection)
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        _run_tool(
            [
                "pg_dump",
                "--format=custom",
                "--compress=0",
                f"--snapshot={snapshot_id}",
                f"--lock-wait-timeout={int(timeout * 1000)}",
                "--file",
                str(target),
                _libpq_url(url),
            ],
            url,
            timeout=None,
        )
        connection.exec_driver_sql("COMMIT")
    return Snapshot(target, "pg_dump", revision, row_counts)


def _count_tables(connection: sa.Connection) -> dict[str, int]:
    inspector = sa.inspect(connection)
    counts = {}
    for table in sorted(inspector.get_table_names()):
        quoted = connection.dialect.identifier_preparer.quote(table)
        statement = f"SELECT COUNT(*) FROM {quoted}"  # noqa: S608 - a quoted table name
        counts[table] = int(connection.exec_driver_sql(statement).scalar_one())
    return counts


def _libpq_url(url: str) -> str:
    """Return the URL for libpq tools: `postgresql://` scheme, password left out.

    The password travels in PGPASSWORD instead, so that it never shows in `ps`.
    """
    parsed = make_url(url).set(drivername="postgresql", password=None)
    return parsed.render_as_string(hide_password=False)


def _tool_environment(url: str) -> dict[str, str]:
    environment = dict(os.environ)
    password = make_url(url).password
    if password:
        environment["PGPASSWORD"] = str(password)
    return environment


def _run_tool(arguments: list[str], url: str, timeout: float | None) -> None:
    safe_url = make_url(url).render_as_string(hide_password=True)
    try:
        result = subprocess.run(  # noqa: S603 - pg_dump or pg_restore with our arguments
            arguments, capture_output=True, text=True, timeout=timeout, env=_tool_environment(url)
        )
    except FileNotFoundError:
        raise SnapshotError(
            f"{arguments[0]} not found; install PostgreSQL's client tools "
            "(Debian: apt-get install postgresql-client)"
        ) from None
    if result.returncode != 0:
        detail = result.stderr.strip()
        raise SnapshotError(f"{arguments[0]} failed for {safe_url}: {detail}")
    log.info("%s finished for %s", arguments[0], safe_url)
