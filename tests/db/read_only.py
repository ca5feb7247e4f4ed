"""Making a test database read-only, as a wrong file flag or server setting would."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from llmcloud.db import Database


@contextmanager
def read_only(url: str, *databases: Database) -> Iterator[None]:
    """Make the database at `url` reject writes until the block ends.

    A SQLite file gets mode 0444, or the immutable flag (`chattr +i`) when the
    tests run as root, because root may write a file whatever its mode. The
    test is skipped when chattr fails. A PostgreSQL database gets
    `default_transaction_read_only = on`, which each new connection reads. The
    connection pools of `databases` are emptied on entry and on exit, so that
    their next connections see the change.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        manager = _read_only_file(Path(parsed.database))
    else:
        manager = _read_only_postgres(url)
    with manager:
        _empty_pools(databases)
        try:
            yield
        finally:
            _empty_pools(databases)


@contextmanager
def _read_only_file(path: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            yield
        finally:
            path.chmod(mode)
        return

    _chattr("+i", path)
    try:
        yield
    finally:
        _chattr("-i", path)


def _chattr(flag: str, path: Path) -> None:
    try:
        subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("chattr is missing, and root ignores a file's mode 0444")
    except subprocess.CalledProcessError as exc:
        pytest.skip(
            f"chattr {flag} {path} failed ({exc.stderr.strip()}), and root ignores mode 0444"
        )


@contextmanager
def _read_only_postgres(url: str) -> Iterator[None]:
    name = make_url(url).database
    assert name is not None
    database = sql.Identifier(name)
    _run(url, sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database))
    try:
        yield
    finally:
        _run(url, sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database))


def _run(url: str, statement: sql.Composed) -> None:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    # The session setting overrides the database's, so that the RESET itself may run.
    options = "-c default_transaction_read_only=off"
    with psycopg.connect(conninfo, autocommit=True, options=options) as connection:
        connection.execute(statement)


def _empty_pools(databases: tuple[Database, ...]) -> None:
    for database in databases:
        database.engine.dispose()
