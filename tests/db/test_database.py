from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError, StatementError

from llmcloud.db import Database, database_url_from_settings, open_database
from llmcloud.db.models import (
    ApiKey,
    AuditEvent,
    Base,
    Chat,
    Message,
    MessageRole,
    Outcome,
    Role,
    User,
    UserSession,
)
from llmcloud.settings import ConfigError, Settings


def test_open_database_rejects_unknown_database() -> None:
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        open_database("mysql://root@127.0.0.1/llmcloud")


def test_open_database_rejects_unparseable_url() -> None:
    with pytest.raises(ConfigError, match="invalid database URL"):
        open_database("not a url")


def test_open_database_rejects_sqlite_without_file() -> None:
    with pytest.raises(ConfigError, match="names no file"):
        open_database("sqlite://")


def test_open_database_uses_psycopg_for_postgresql_urls() -> None:
    database = open_database("postgresql://someone:hunter22@127.0.0.1:1/llmcloud")
    assert database.engine.url.drivername == "postgresql+psycopg"
    assert "hunter22" not in database.safe_url


def test_open_database_creates_sqlite_folder(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'new' / 'llmcloud.db'}")
    database.upgrade()
    database.dispose()
    assert (tmp_path / "new" / "llmcloud.db").is_file()


def test_database_url_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert database_url_from_settings(settings) == f"sqlite:///{tmp_path}/llmcloud.db"


def test_database_url_comes_from_settings(tmp_path: Path) -> None:
    url = "postgresql://llmcloud@db.internal/llmcloud"
    settings = Settings(data_dir=tmp_path, database_url=url)
    assert database_url_from_settings(settings) == url


def test_upgrade_migrates_empty_database_to_head(empty_database: Database) -> None:
    assert empty_database.current_revision() is None
    empty_database.upgrade()
    assert empty_database.current_revision() == empty_database.head_revision()


def test_upgrade_creates_every_model_table(empty_database: Database) -> None:
    empty_database.upgrade()
    tables = set(sa.inspect(empty_database.engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_upgrade_twice_changes_nothing(database: Database) -> None:
    database.upgrade()
    assert database.current_revision() == database.head_revision()


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrations_match_models(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_sqlite_connection_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'llmcloud.db'}")
    with database.engine.connect() as connection:
        journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
    database.dispose()
    assert journal_mode == "wal"
    assert foreign_keys == 1


def test_times_come_back_in_utc(database: Database) -> None:
    created = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    with database.transaction() as session:
        session.add(User(username="alice", role=Role.USER, created_at=created))
    with database.session() as session:
        stored = session.scalars(sa.select(User)).one().created_at
    assert stored == created
    assert stored.tzinfo == UTC


def test_naive_time_is_rejected(database: Database) -> None:
    def add_user_with_naive_time() -> None:
        with database.transaction() as session:
            session.add(User(username="alice", created_at=datetime(2024, 5, 1)))

    with pytest.raises(StatementError, match="naive datetime"):
        add_user_with_naive_time()


def test_transaction_rolls_back_on_error(database: Database) -> None:
    def add_user_then_fail() -> None:
        with database.transaction() as session:
            session.add(User(username="alice"))
            session.flush()
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        add_user_then_fail()
    with database.session() as session:
        assert session.scalars(sa.select(User)).all() == []


def test_usernames_are_unique_ignoring_case(database: Database) -> None:
    with database.transaction() as session:
        session.add(User(username="Alice"))
    with pytest.raises(IntegrityError), database.transaction() as session:
        session.add(User(username="alice"))


def test_role_check_constraint_rejects_unknown_role(database: Database) -> None:
    insert = sa.text(
        "INSERT INTO users (username, role, created_at) VALUES ('mallory', 'root', :now)"
    )
    with pytest.raises(IntegrityError), database.engine.begin() as connection:
        connection.execute(insert, {"now": datetime.now(UTC)})


def test_deleting_user_deletes_owned_rows(database: Database) -> None:
    user_id = _user_with_data(database)
    with database.transaction() as session:
        session.execute(sa.delete(User).where(User.id == user_id))
    with database.session() as session:
        for model in (Chat, Message, UserSession, ApiKey):
            assert session.scalars(sa.select(model)).all() == [], model.__tablename__


def test_deleting_user_keeps_audit_events(database: Database) -> None:
    user_id = _user_with_data(database)
    with database.transaction() as session:
        session.execute(sa.delete(User).where(User.id == user_id))
    with database.session() as session:
        event = session.scalars(sa.select(AuditEvent)).one()
    assert event.actor_user_id is None


def test_concurrent_read_then_write_transactions_commit(database: Database) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def read_then_write(index: int) -> None:
        try:
            barrier.wait()
            with database.transaction() as session:
                count = session.scalar(sa.select(sa.func.count()).select_from(User))
                time.sleep(0.05)  # let the other writers read before this one writes
                session.add(User(username=f"user{index}-{count}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_then_write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 6


def _user_with_data(database: Database) -> int:
    now = datetime.now(UTC)
    with database.transaction() as session:
        user = User(username="alice", role=Role.USER)
        session.add(user)
        session.flush()
        chat = Chat(id="chat1", user_id=user.id, title="hello")
        session.add(chat)
        session.flush()
        session.add_all(
            [
                Message(chat_id=chat.id, role=MessageRole.USER, content="hi"),
                UserSession(
                    token_hash="0" * 64, user_id=user.id, expires_at=now, csrf_token="csrf"
                ),
                ApiKey(user_id=user.id, name="laptop", prefix="llmc_abc", key_hash="1" * 64),
                AuditEvent(actor_user_id=user.id, action="login", outcome=Outcome.SUCCESS),
            ]
        )
        return user.id
