"""Databases for storage tests: each test runs on SQLite and on PostgreSQL.

The PostgreSQL half uses a fresh database per test module on the server named
by LLMCLOUD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
and is skipped, with the connection error as the reason, when none is reachable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmcloud.db import Database, open_database
from llmcloud.db.testing import (
    prepare_database,
    reset_database,
)
from tests.conftest import scratch_postgres_or_skip


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres_or_skip() as url:
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
