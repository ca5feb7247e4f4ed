"""Data dirs with users, chats and keys, settings that back them up to a folder, and PostgreSQL.

The PostgreSQL tests use a fresh database per test on the server named by
LLMCLOUD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
and are skipped, with the connection error as the reason, when none is reachable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from llmcloud.auth.accounts import create_account
from llmcloud.auth.api_keys import create_api_key
from llmcloud.db import Database, open_database
from llmcloud.db.chats import add_message, create_chat
from llmcloud.db.models import Base
from llmcloud.settings import Settings
from tests.conftest import scratch_postgres_or_skip

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("LLMCLOUD_CONFIG", raising=False)


def backup_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "backup_targets": [str(tmp_path / "backups")],
        "backup_lock_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


def fill_database(database: Database, users: int = 3) -> None:
    """Write accounts, chats with messages, and API keys."""
    for number in range(users):
        user = create_account(database, f"user{number}", "a long password 123", hasher=FAST_HASHER)
        create_api_key(database, user.id, f"key {number}")
        chat = create_chat(database, user.id, title=f"chat {number}")
        add_message(database, user.id, chat.id, "user", f"question {number}")
        add_message(database, user.id, chat.id, "assistant", f"answer {number}")


def dump_tables(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of every table, sorted, for comparing two databases."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with database.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = connection.execute(sa.select(table)).all()
            tables[table.name] = sorted((tuple(row) for row in rows), key=repr)
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        tables["alembic_version"] = [tuple(row) for row in revision]
    return tables


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return backup_settings(tmp_path)


@pytest.fixture
def filled(settings: Settings) -> Iterator[Database]:
    """The SQLite database of `settings`, migrated and filled, plus files in the data dir."""
    database = open_database(f"sqlite:///{settings.data_dir / 'llmcloud.db'}")
    database.upgrade()
    fill_database(database)
    for folder, name, text in [
        ("secrets", "session.key", "secret"),
        ("certs", "server.pem", "certificate"),
        ("uploads", "a/file.txt", "upload"),
        ("models/manifests", "registry/library/smollm2/135m", "{}"),
    ]:
        path = settings.data_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (settings.data_dir / "secrets" / "session.key").chmod(0o600)
    yield database
    database.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with scratch_postgres_or_skip() as url:
        yield url
