"""A database that rejects writes: the write check, the error it raises, and /readyz's check."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from llmcloud.db import Database, health, open_database
from llmcloud.db import database as database_module
from llmcloud.db.errors import DatabaseReadOnly
from llmcloud.db.models import Role, User
from tests.db.read_only import read_only

# Part of each driver's error message for a rejected write.
DRIVER_MESSAGES = {
    "sqlite": "attempt to write a readonly database",
    "postgresql": "read-only transaction",
}


def _add_user(database: Database, username: str) -> None:
    with database.transaction() as session:
        session.add(User(username=username, role=Role.USER))


def test_check_writable_passes_when_writable(database: Database) -> None:
    database.check_writable()


def test_check_writable_changes_nothing(database: Database) -> None:
    revision = database.current_revision()

    database.check_writable()

    assert database.current_revision() == revision


def test_check_writable_rejects_read_only(database: Database, database_url: str) -> None:
    with read_only(database_url, database), pytest.raises(DatabaseReadOnly) as caught:
        database.check_writable()

    assert caught.value.status_code == 503
    assert caught.value.safe_url == database.safe_url
    assert DRIVER_MESSAGES[database.dialect] in caught.value.driver_message


def test_read_only_message_names_database_and_fix(database: Database, database_url: str) -> None:
    with read_only(database_url, database), pytest.raises(DatabaseReadOnly) as caught:
        database.check_writable()

    message = caught.value.operator_message
    assert f"the database {database.safe_url} is read-only" in message
    assert DRIVER_MESSAGES[database.dialect] in message
    if database.dialect == "sqlite":
        assert "its -wal and -shm files writable by the user that runs llmcloud" in message
    else:
        assert "connect to a writable primary server with a role that may write" in message


def test_read_only_client_message_names_no_path(database: Database, database_url: str) -> None:
    with read_only(database_url, database), pytest.raises(DatabaseReadOnly) as caught:
        _add_user(database, "alice")

    assert "an operator must make the database writable" in caught.value.message
    assert database.safe_url not in caught.value.message


def test_read_only_write_logs_one_error(
    database: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        read_only(database_url, database),
        caplog.at_level(logging.INFO, "llmcloud.db"),
        pytest.raises(DatabaseReadOnly),
    ):
        _add_user(database, "alice")

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert errors[0].name == "llmcloud.db"
    assert errors[0].exc_info is None
    assert database.safe_url in errors[0].getMessage()
    assert DRIVER_MESSAGES[database.dialect] in errors[0].getMessage()


def test_writes_work_again_once_writable(database: Database, database_url: str) -> None:
    with read_only(database_url, database), pytest.raises(DatabaseReadOnly):
        _add_user(database, "alice")

    _add_user(database, "alice")

    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_other_database_errors_pass_unchanged(database: Database) -> None:
    with pytest.raises(DBAPIError), database.transaction() as session:
        session.execute(sa.text("UPDATE no_such_table SET x = 1"))


def test_database_problem_reports_read_only(database: Database, database_url: str) -> None:
    with read_only(database_url, database):
        problem = health.database_problem(database)

    assert problem is not None
    assert f"database {database.safe_url} is read-only" in problem


def test_database_problem_none_when_writable(database: Database) -> None:
    assert health.database_problem(database) is None


def test_write_problem_reuses_recent_result(database: Database, database_url: str) -> None:
    assert health.write_problem(database) is None

    with read_only(database_url, database):
        assert health.write_problem(database) is None


def test_write_problem_checks_again_after_interval(
    database: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert health.write_problem(database) is None
    monkeypatch.setattr(health, "WRITE_CHECK_INTERVAL_SECONDS", 0.0)

    with read_only(database_url, database):
        problem = health.write_problem(database)

    assert problem is not None
    assert "is read-only" in problem


@contextmanager
def _write_lock_held(database: Database) -> Iterator[None]:
    """Hold the write lock (SQLite) or alembic_version's row (PostgreSQL) in another thread."""
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with database.transaction() as session:
            session.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        holder.join(10)


def test_write_problem_skips_a_held_lock(database: Database) -> None:
    started = time.monotonic()
    with _write_lock_held(database):
        problem = health.write_problem(database)

    assert problem is None
    assert time.monotonic() - started < 5


def test_write_problem_keeps_last_result_while_locked(
    database: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "WRITE_CHECK_INTERVAL_SECONDS", 0.0)
    with read_only(database_url, database):
        first = health.write_problem(database)
    assert first is not None

    with _write_lock_held(database):
        assert health.write_problem(database) == first


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'llmcloud.db'}")
    yield database
    database.dispose()


def _revision_of_file(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        connection.close()
    return str(row[0])


def test_upgrade_empties_sqlite_wal(sqlite_database: Database, tmp_path: Path) -> None:
    sqlite_database.upgrade()

    wal = tmp_path / "llmcloud.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_upgrade_leaves_revision_in_sqlite_file(sqlite_database: Database, tmp_path: Path) -> None:
    sqlite_database.upgrade("0002")
    sqlite_database.upgrade()

    # A copy of the .db file alone, without its -wal file, shows what the checkpoint wrote.
    copy = tmp_path / "copy" / "llmcloud.db"
    copy.parent.mkdir()
    shutil.copyfile(tmp_path / "llmcloud.db", copy)
    assert _revision_of_file(copy) == sqlite_database.head_revision()


def test_upgrade_logs_checkpoint_kept_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_SECONDS", 0.2)
    database = open_database(f"sqlite:///{tmp_path / 'llmcloud.db'}")
    database.upgrade("0002")
    # A reader whose snapshot is older than the migration stops the WAL from being emptied.
    reader = sqlite3.connect(tmp_path / "llmcloud.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM users").fetchone()
    try:
        with caplog.at_level(logging.WARNING, "llmcloud.db"):
            database.upgrade()
    finally:
        reader.close()
        database.dispose()

    messages = [record.getMessage() for record in caplog.records]
    assert any("checkpoint after the migration did not complete" in m for m in messages), messages
