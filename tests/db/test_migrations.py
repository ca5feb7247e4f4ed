"""Migrating a database that has rows: every row stays, and ids are never given out twice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from llmcloud.db import Database
from llmcloud.db.models import (
    ApiKey,
    AuditEvent,
    Backend,
    BackendKind,
    Base,
    Chat,
    Identity,
    Message,
    MessageRole,
    Outcome,
    Role,
    User,
    UserSession,
)


def _fill(database: Database) -> None:
    """Add rows to every table, two of each kind whose ids could be reused."""
    now = datetime.now(UTC)
    with database.transaction() as session:
        users = [User(username=name, role=Role.USER) for name in ("alice", "bob")]
        session.add_all(users)
        session.flush()
        chats = [Chat(id=f"chat-{user.username}", user_id=user.id, title="t") for user in users]
        session.add_all(chats)
        session.flush()
        for user, chat in zip(users, chats, strict=True):
            session.add_all(
                [
                    Message(chat_id=chat.id, role=MessageRole.USER, content="hi"),
                    Message(chat_id=chat.id, role=MessageRole.ASSISTANT, content="hello"),
                    UserSession(
                        token_hash=user.username.ljust(64, "0"),
                        user_id=user.id,
                        expires_at=now,
                        csrf_token="csrf",
                    ),
                    ApiKey(
                        user_id=user.id,
                        name="laptop",
                        prefix="llmc_abc",
                        key_hash=user.username.ljust(64, "1"),
                    ),
                    Identity(user_id=user.id, provider="github", subject=user.username),
                    AuditEvent(actor_user_id=user.id, action="login", outcome=Outcome.SUCCESS),
                ]
            )
        session.add_all(
            [
                Backend(name=name, kind=BackendKind.OLLAMA, base_url="http://127.0.0.1:11434")
                for name in ("first", "second")
            ]
        )


def _counts(database: Database) -> dict[str, int]:
    counts = {}
    with database.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            query = sa.select(sa.func.count()).select_from(table)
            counts[table.name] = connection.execute(query).scalar_one()
    return counts


@pytest.fixture
def migrated(empty_database: Database) -> Database:
    """A database filled at revision 0002, then migrated to the newest revision."""
    empty_database.upgrade("0002")
    _fill(empty_database)
    before = _counts(empty_database)
    empty_database.upgrade()
    assert _counts(empty_database) == before
    return empty_database


@pytest.mark.parametrize("model", [User, ApiKey, Message, Backend])
def test_deleted_newest_id_not_reused(migrated: Database, model: type[Base]) -> None:
    table = model.__table__
    with migrated.transaction() as session:
        newest = session.execute(sa.select(sa.func.max(table.c.id))).scalar_one()
        session.execute(sa.delete(table).where(table.c.id == newest))
    with migrated.transaction() as session:
        if model is User:
            added: Base = User(username="carol", role=Role.USER)
        elif model is ApiKey:
            added = ApiKey(user_id=1, name="phone", prefix="llmc_def", key_hash="2" * 64)
        elif model is Message:
            added = Message(chat_id="chat-alice", role=MessageRole.USER, content="again")
        else:
            added = Backend(name="third", kind=BackendKind.OPENAI, base_url="http://127.0.0.1:8000")
        session.add(added)
        session.flush()
        new_id = session.execute(sa.select(sa.func.max(table.c.id))).scalar_one()

    assert new_id > newest


def test_cascades_work_after_migration(migrated: Database) -> None:
    with migrated.transaction() as session:
        session.execute(sa.delete(User).where(User.username == "bob"))
    counts = _counts(migrated)

    assert counts["users"] == 1
    assert counts["chats"] == 1
    assert counts["messages"] == 2
    assert counts["sessions"] == 1
    assert counts["api_keys"] == 1
    assert counts["identities"] == 1
    assert counts["audit_events"] == 2


def test_usernames_still_unique_ignoring_case(migrated: Database) -> None:
    with pytest.raises(IntegrityError), migrated.transaction() as session:
        session.add(User(username="ALICE", role=Role.USER))


def test_sqlite_foreign_keys_on_after_upgrade(migrated: Database) -> None:
    if migrated.dialect != "sqlite":
        pytest.skip("foreign keys are always enforced on PostgreSQL")
    with migrated.engine.connect() as connection:
        enabled = connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one()

    assert enabled == 1
