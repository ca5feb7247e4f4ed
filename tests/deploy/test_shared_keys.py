"""The shared session key and the start-up check that it matches the database's record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmcloud.db import Database, open_database
from llmcloud.deploy.shared_keys import (
    SharedKeyMismatchError,
    check_key,
    check_session_key,
    fingerprint,
    read_record,
    session_key,
)
from llmcloud.settings import ConfigError, Settings, load_settings

KEY_A = "a1" * 32
KEY_B = "b2" * 32


# key_fingerprints as releases before migration 0002 created it on first use.
_OLDER_METADATA = sa.MetaData()
_OLDER_TABLE = sa.Table(
    "key_fingerprints",
    _OLDER_METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.String(40), nullable=False),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'llmcloud.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = open_database(url)
    yield opened
    opened.dispose()


@pytest.fixture
def database(empty_database: Database) -> Database:
    empty_database.upgrade()
    return empty_database


def _has_fingerprint_table(database: Database) -> bool:
    return sa.inspect(database.engine).has_table("key_fingerprints")


def test_session_key_comes_from_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, session_secret_key=KEY_A)

    assert session_key(settings) == bytes.fromhex(KEY_A)
    assert not (tmp_path / "secrets").exists()


def test_session_key_falls_back_to_key_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    key = session_key(settings)

    assert len(key) == 32
    assert (tmp_path / "secrets" / "session_key").read_bytes() == key


def test_setting_rejects_short_key_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(data_dir=tmp_path, session_secret_key="abc123")

    message = str(caught.value)
    assert "session_secret_key" in message
    assert "expected 64 hex digits" in message
    assert "abc123" not in message


def test_setting_accepts_upper_case_hex(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, session_secret_key=KEY_A.upper())

    assert session_key(settings) == bytes.fromhex(KEY_A)


def test_check_key_records_first_fingerprint(database: Database) -> None:
    check_key(database, "session_key", bytes.fromhex(KEY_A))

    record = read_record(database, "session_key")
    assert record is not None
    assert record.fingerprint == fingerprint(bytes.fromhex(KEY_A))


def test_check_key_accepts_same_key_again(database: Database) -> None:
    check_key(database, "session_key", bytes.fromhex(KEY_A))

    check_key(database, "session_key", bytes.fromhex(KEY_A))


def test_check_key_rejects_other_key(database: Database) -> None:
    check_key(database, "session_key", bytes.fromhex(KEY_A))

    with pytest.raises(SharedKeyMismatchError) as caught:
        check_key(database, "session_key", bytes.fromhex(KEY_B))

    message = str(caught.value)
    assert "LLMCLOUD_SESSION_SECRET_KEY" in message
    assert fingerprint(bytes.fromhex(KEY_B))[:12] in message
    assert KEY_A not in message
    assert KEY_B not in message


def test_check_key_keeps_record_after_mismatch(database: Database) -> None:
    check_key(database, "session_key", bytes.fromhex(KEY_A))
    with pytest.raises(SharedKeyMismatchError):
        check_key(database, "session_key", bytes.fromhex(KEY_B))

    record = read_record(database, "session_key")
    assert record is not None
    assert record.fingerprint == fingerprint(bytes.fromhex(KEY_A))


def test_check_session_key_uses_setting(database: Database, tmp_path: Path) -> None:
    check_session_key(database, Settings(data_dir=tmp_path / "a", session_secret_key=KEY_A))

    with pytest.raises(SharedKeyMismatchError):
        check_session_key(database, Settings(data_dir=tmp_path / "b"))


def test_upgrade_from_0001_creates_fingerprint_table(empty_database: Database) -> None:
    empty_database.upgrade("0001")
    assert not _has_fingerprint_table(empty_database)

    empty_database.upgrade()

    assert _has_fingerprint_table(empty_database)
    check_key(empty_database, "session_key", bytes.fromhex(KEY_A))
    assert read_record(empty_database, "session_key") is not None


def test_upgrade_keeps_table_of_older_release(empty_database: Database) -> None:
    empty_database.upgrade("0001")
    with empty_database.transaction() as session:
        _OLDER_METADATA.create_all(session.connection())
        session.execute(
            sa.insert(_OLDER_TABLE).values(
                name="session_key",
                fingerprint=fingerprint(bytes.fromhex(KEY_A)),
                recorded_at="2026-01-02T03:04:05+00:00",
            )
        )

    empty_database.upgrade()

    assert empty_database.current_revision() == empty_database.head_revision()
    record = read_record(empty_database, "session_key")
    assert record is not None
    assert record.fingerprint == fingerprint(bytes.fromhex(KEY_A))
    assert record.recorded_at == "2026-01-02T03:04:05+00:00"
    with pytest.raises(SharedKeyMismatchError):
        check_key(empty_database, "session_key", bytes.fromhex(KEY_B))
