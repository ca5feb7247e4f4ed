from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from llmcloud.backup import operations, schedule
from llmcloud.backup.errors import BackupError
from llmcloud.backup.restore import check_data_dir_at_start
from llmcloud.backup.run import backup_lock
from llmcloud.backup.schedule import (
    _scheduled_backup,
    _scheduled_verify,
    parse_cron,
    start_backup_scheduler,
)
from llmcloud.backup.status import read_status
from llmcloud.backup.targets import ARCHIVE_FILE, targets_from_settings
from llmcloud.db import Database, open_database
from llmcloud.settings import ConfigError, Settings
from tests.backup.conftest import backup_settings


def test_scheduler_starts_both_jobs(settings: Settings) -> None:
    async def start() -> list[str]:
        scheduler = start_backup_scheduler(settings)
        assert scheduler is not None
        ids = [job.id for job in scheduler.get_jobs()]
        scheduler.shutdown(wait=False)
        return ids

    # The scheduler lists jobs by their next run, which depends on the time of day.
    assert sorted(asyncio.run(start())) == ["backup", "backup-verify"]


def test_scheduler_off_when_schedules_empty(tmp_path: Path) -> None:
    settings = backup_settings(tmp_path, backup_schedule="", backup_verify_schedule="")

    async def start() -> object:
        return start_backup_scheduler(settings)

    assert asyncio.run(start()) is None


def test_parse_cron_names_bad_expression() -> None:
    with pytest.raises(ConfigError, match="invalid backup_schedule 'every hour'"):
        parse_cron("every hour", "backup_schedule")


def test_start_check_rejects_empty_data_dir_with_backups(
    settings: Settings, filled: Database
) -> None:
    operations.backup_and_prune(settings)
    fresh = backup_settings(settings.data_dir.parent, data_dir=settings.data_dir.parent / "empty")

    with pytest.raises(BackupError, match="llmcloud backup restore"):
        check_data_dir_at_start(fresh, targets_from_settings(fresh))


def test_backup_before_migration_skips_current_schema(settings: Settings, filled: Database) -> None:
    assert operations.backup_before_migration(settings, filled) is None


def test_backup_before_migration_backs_up_old_schema(settings: Settings, filled: Database) -> None:
    with filled.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'older'")

    result = operations.backup_before_migration(settings, filled)

    assert result is not None
    assert operations.show_backup(settings, result.backup_id).schema_revision == "older"


def test_scheduled_backup_skips_while_locked(
    settings: Settings, filled: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.backup")
    with backup_lock(settings.data_dir):
        _scheduled_backup(settings)

    assert "scheduled backup skipped" in caplog.text
    assert operations.list_backups(settings) == []


def test_scheduled_verify_logs_failure(
    settings: Settings, filled: Database, caplog: pytest.LogCaptureFixture
) -> None:
    _scheduled_backup(settings)
    for archive in Path(settings.backup_targets[0]).glob(f"*/{ARCHIVE_FILE}"):
        archive.write_bytes(b"not an age file")

    _scheduled_verify(settings)

    assert "scheduled restore test failed" in caplog.text
    assert read_status(settings.data_dir).verify_failures_total == 1
    assert read_status(settings.data_dir).last_success_at is not None


def test_start_check_accepts_shared_postgres(tmp_path: Path, postgres_url: str) -> None:
    database = open_database(postgres_url)
    database.upgrade()
    database.dispose()
    settings = backup_settings(tmp_path, database_url=postgres_url)
    operations.backup_and_prune(settings)
    second = backup_settings(tmp_path, database_url=postgres_url, data_dir=tmp_path / "second")

    check_data_dir_at_start(second, targets_from_settings(second))

    assert not (tmp_path / "second" / "instance.json").exists()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize(("background", "expected"), [(True, "SCHED_IDLE"), (False, "SCHED_OTHER")])
def test_scheduled_backup_follows_engine_class(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, background: bool, expected: str
) -> None:
    policies: list[int] = []
    monkeypatch.setattr(
        schedule, "backup_and_prune", lambda _: policies.append(os.sched_getscheduler(0))
    )
    settings = settings.model_copy(update={"engine_background": background})
    # In a thread of its own, which the idle class does not outlive.
    job = threading.Thread(target=_scheduled_backup, args=(settings,))
    job.start()
    job.join()
    assert policies == [getattr(os, expected)]
