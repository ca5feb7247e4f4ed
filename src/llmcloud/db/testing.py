"""Scratch databases for tests of llmcloud and of code built on it.

Storage tests run against SQLite and, where a server is reachable, against
PostgreSQL. `LLMCLOUD_TEST_POSTGRES_URL` names that server (default:
`postgresql://postgres@127.0.0.1:5432/test`); each test module gets a freshly
created database on it, dropped again afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from llmcloud.db.database import Database
from llmcloud.db.models import Base

POSTGRES_URL_ENV = "LLMCLOUD_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_SECONDS = 3


class PostgresUnavailable(Exception):
    """No PostgreSQL server accepts connections at the test URL."""


def postgres_server_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


@contextmanager
def scratch_postgres_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database on the server, yield its URL, then drop it.

    Raises PostgresUnavailable, with the server's error, when no connection can
    be made.
    """
    name = f"llmcloud_test_{secrets.token_hex(6)}"
    _run_admin_statement(server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        _run_admin_statement(server_url, drop)


def prepare_database(database: Database) -> None:
    """Bring the database to the newest schema with every table empty.

    A database already at the newest revision only has its rows deleted,
    which is much faster on PostgreSQL than creating the schema again.
    """
    if database.current_revision() != database.head_revision():
        reset_database(database)
        database.upgrade()
        return
    with database.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


def reset_database(database: Database) -> None:
    """Drop llmcloud's tables, leaving the database as empty as a new one.

    On PostgreSQL the whole `public` schema is dropped and created again.
    """
    with database.engine.begin() as connection:
        if database.dialect == "postgresql":
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
            return
        Base.metadata.drop_all(connection)
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


def _run_admin_statement(server_url: str, statement: sql.Composed) -> None:
    conninfo = make_url(server_url).set(drivername="postgresql")
    try:
        connection = psycopg.connect(
            conninfo.render_as_string(hide_password=False),
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    except psycopg.OperationalError as exc:
        raise PostgresUnavailable(str(exc).strip()) from None
    with connection:
        connection.execute(statement)
