"""Databases and a fast password hasher for account tests.

Each database test runs on SQLite and on PostgreSQL. The PostgreSQL half
uses a fresh database per test module on the server named by
LLMCLOUD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
and is skipped, with the connection error as the reason, when none is reachable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy.engine import make_url

from llmcloud.db import Database, open_database
from llmcloud.db.testing import (
    PostgresUnavailable,
    postgres_server_url,
    prepare_database,
    reset_database,
    scratch_postgres_database,
)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    server = postgres_server_url()
    with ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_postgres_database(server))
        except PostgresUnavailable as exc:
            safe_url = make_url(server).render_as_string(hide_password=True)
            pytest.skip(f"PostgreSQL half skipped: no server reachable at {safe_url}: {exc}")
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'llmcloud.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def empty_database(database_url: str) -> Iterator[Database]:
    """A database without any table."""
    database = open_database(database_url)
    reset_database(database)
    yield database
    database.dispose()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A database at the newest schema revision, with no rows."""
    database = open_database(database_url)
    prepare_database(database)
    yield database
    database.dispose()


@pytest.fixture
def hasher() -> PasswordHasher:
    """An argon2id hasher with the cheapest parameters, to keep tests fast."""
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
