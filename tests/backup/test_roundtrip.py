from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyrage import x25519  # type: ignore[import-untyped]

from llmcloud.backup import operations
from llmcloud.backup.errors import BackupError
from llmcloud.backup.restore import restore_backup
from llmcloud.backup.status import read_status
from llmcloud.backup.targets import targets_from_settings
from llmcloud.db import Database, open_database
from llmcloud.settings import Settings
from tests.backup.conftest import backup_settings, dump_tables, fill_database


def test_backup_restores_every_row_on_sqlite(settings: Settings, filled: Database) -> None:
    before = dump_tables(filled)
    result = operations.backup_and_prune(settings)
    filled.dispose()
    shutil.rmtree(settings.data_dir / "uploads")
    (settings.data_dir / "llmcloud.db").unlink()
    (settings.data_dir / "instance.json").unlink()
    key = settings.data_dir / "secrets" / "backup.age"
    saved_key = settings.data_dir.parent / "backup.age"
    shutil.copy(key, saved_key)
    shutil.rmtree(settings.data_dir)

    identities = operations.identities_for(settings, saved_key)
    restore_backup(settings, targets_from_settings(settings), identities, result.backup_id)

    restored = open_database(f"sqlite:///{settings.data_dir / 'llmcloud.db'}")
    try:
        assert dump_tables(restored) == before
    finally:
        restored.dispose()
    assert (settings.data_dir / "uploads" / "a" / "file.txt").read_text() == "upload"
    assert (settings.data_dir / "models/manifests/registry/library/smollm2/135m").exists()
    assert (settings.data_dir / "secrets" / "session.key").stat().st_mode & 0o777 == 0o600
    assert (settings.data_dir / "instance.json").exists()


def test_backup_restores_every_row_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    settings = backup_settings(tmp_path, database_url=postgres_url)
    database = open_database(postgres_url)
    database.upgrade()
    fill_database(database)
    before = dump_tables(database)

    result = operations.backup_and_prune(settings)
    verified = operations.verify(settings)
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    (settings.data_dir / "instance.json").unlink()

    identities = operations.identities_for(settings)
    restore_backup(settings, targets_from_settings(settings), identities, result.backup_id)

    try:
        assert dump_tables(database) == before
    finally:
        database.dispose()
    assert verified.row_counts["users"] == 3


def test_verify_records_last_verified_time(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)

    verified = operations.verify(settings)

    status = read_status(settings.data_dir)
    assert verified.backup_id == result.backup_id
    assert status.last_verified_id == result.backup_id
    assert status.last_success_at is not None
    assert verified.row_counts["chats"] == 3


def test_restore_rejects_live_data_dir(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    identities = operations.identities_for(settings)

    with pytest.raises(BackupError, match="--force"):
        restore_backup(settings, targets_from_settings(settings), identities, result.backup_id)


def test_restore_rejects_file_as_data_dir(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    identities = operations.identities_for(settings)
    file = settings.data_dir.parent / "file"
    file.write_text("not a folder")

    with pytest.raises(BackupError, match="is not a folder"):
        restore_backup(
            settings, targets_from_settings(settings), identities, result.backup_id, data_dir=file
        )
    assert file.read_text() == "not a folder"


def test_failed_restore_leaves_no_new_folder(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    wrong_key = [x25519.Identity.generate()]
    destination = settings.data_dir.parent / "restored"

    with pytest.raises(BackupError, match="another key"):
        restore_backup(
            settings,
            targets_from_settings(settings),
            wrong_key,
            result.backup_id,
            data_dir=destination,
        )

    assert not destination.exists()


def test_failed_restore_into_empty_folder_leaves_it_empty(
    settings: Settings, filled: Database
) -> None:
    result = operations.backup_and_prune(settings)
    destination = settings.data_dir.parent / "restored"
    destination.mkdir()

    with pytest.raises(BackupError, match="another key"):
        restore_backup(
            settings,
            targets_from_settings(settings),
            [x25519.Identity.generate()],
            result.backup_id,
            data_dir=destination,
        )

    assert list(destination.iterdir()) == []


def test_forced_restore_backs_up_live_data_dir_first(settings: Settings, filled: Database) -> None:
    first = operations.backup_and_prune(settings)
    fill_database(filled, users=0)
    identities = operations.identities_for(settings)

    result = restore_backup(
        settings, targets_from_settings(settings), identities, first.backup_id, force=True
    )

    assert result.safety_backup_id is not None
    assert len(operations.list_backups(settings)) == 2


def test_restore_into_other_folder_leaves_live_data(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    identities = operations.identities_for(settings)
    other = settings.data_dir.parent / "other"

    restore_backup(
        settings, targets_from_settings(settings), identities, result.backup_id, data_dir=other
    )

    assert (other / "llmcloud.db").is_file()
    assert (settings.data_dir / "llmcloud.db").is_file()


def test_forced_restore_elsewhere_backs_up_live_postgres(tmp_path: Path, postgres_url: str) -> None:
    settings = backup_settings(tmp_path, database_url=postgres_url)
    database = open_database(postgres_url)
    database.upgrade()
    fill_database(database)
    database.dispose()
    first = operations.backup_and_prune(settings)
    identities = operations.identities_for(settings)
    other = tmp_path / "other"

    with pytest.raises(BackupError, match="--force"):
        restore_backup(
            settings, targets_from_settings(settings), identities, first.backup_id, data_dir=other
        )
    result = restore_backup(
        settings,
        targets_from_settings(settings),
        identities,
        first.backup_id,
        data_dir=other,
        force=True,
    )

    assert result.safety_backup_id is not None
    assert len(operations.list_backups(settings)) == 2
    assert operations.show_backup(settings, result.safety_backup_id).database_kind == "pg_dump"
