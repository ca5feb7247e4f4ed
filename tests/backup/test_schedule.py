from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmcloud.backup import operations
from llmcloud.backup.errors import BackupError
from llmcloud.backup.restore import check_data_dir_at_start
from llmcloud.backup.schedule import parse_cron, start_backup_scheduler
from llmcloud.backup.targets import targets_from_settings
from llmcloud.db import Database
from llmcloud.settings import ConfigError, Settings
from tests.backup.conftest import backup_settings


def test_scheduler_starts_both_jobs(settings: Settings) -> None:
    async def start() -> list[str]:
        scheduler = start_backup_scheduler(settings)
        assert scheduler is not None
        ids = [job.id for job in scheduler.get_jobs()]
        scheduler.shutdown(wait=False)
        return ids

    assert asyncio.run(start()) == ["backup", "backup-verify"]


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
