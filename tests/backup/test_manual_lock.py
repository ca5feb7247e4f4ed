"""Manual backup commands and the start-up migration wait for the deployment lock.

Each settings object stands for a web instance with its own data dir, and all
of them back up to one target. The tests use the PostgreSQL and Redis servers
on 127.0.0.1 and are skipped, with the connection error as the reason, when
one is not reachable.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from llmcloud.backup import operations
from llmcloud.backup.deployment_lock import (
    KEY_PREFIX,
    deployment_lock,
    process_label,
    wait_for_deployment_lock,
)
from llmcloud.backup.errors import BackupBusy
from llmcloud.cli import app
from llmcloud.db import open_database
from llmcloud.deploy.upgrade import MigrationResult, migrate_with_backup
from llmcloud.settings import Settings
from tests.backup.conftest import backup_settings, fill_database
from tests.deploy.test_upgrade import NEWER_REVISION, _add_migration

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server answers on {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def unique_prefix(monkeypatch: pytest.MonkeyPatch) -> str:
    """Give this test's lock keys a prefix of their own, in Redis and in PostgreSQL."""
    prefix = f"{KEY_PREFIX}test-{secrets.token_hex(4)}:"
    monkeypatch.setattr("llmcloud.backup.deployment_lock.KEY_PREFIX", prefix)
    return prefix


class WaitingSeen(logging.Handler):
    """Sets `event` when the lock logs that it waits for another holder."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting up to" in record.getMessage():
            self.event.set()


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        "LLMCLOUD_DATA_DIR": str(settings.data_dir),
        "LLMCLOUD_BACKUP_TARGETS": json.dumps(settings.backup_targets),
        # A short wait, so that the command gives up while the test holds the lock.
        "LLMCLOUD_BACKUP_DEPLOYMENT_LOCK_TIMEOUT": "0.2",
    }
    if settings.database_url is not None:
        env["LLMCLOUD_DATABASE_URL"] = settings.database_url.get_secret_value()
    if settings.redis_url is not None:
        env["LLMCLOUD_REDIS_URL"] = settings.redis_url.get_secret_value()
    return {**env, **extra}


def test_manual_backup_waits_for_held_lock(
    tmp_path: Path, postgres_url: str, unique_prefix: str
) -> None:
    database = open_database(postgres_url)
    database.upgrade()
    fill_database(database)
    database.dispose()
    first = backup_settings(tmp_path, data_dir=tmp_path / "first", database_url=postgres_url)
    second = backup_settings(tmp_path, data_dir=tmp_path / "second", database_url=postgres_url)
    waiting = WaitingSeen()
    logging.getLogger("llmcloud.backup").addHandler(waiting)
    errors: list[BaseException] = []

    def manual_backup() -> None:
        try:
            with wait_for_deployment_lock(second, "backup", "the backup"):
                operations.backup_and_prune(second)
        except BaseException as exc:  # the thread hands it to the assert below
            errors.append(exc)

    worker = threading.Thread(target=manual_backup)
    try:
        with deployment_lock(first, "backup") as held:
            worker.start()
            saw_waiting = waiting.event.wait(60)
            backups_while_held = operations.list_backups(second)
        worker.join(120)
    finally:
        logging.getLogger("llmcloud.backup").removeHandler(waiting)

    assert held
    assert saw_waiting
    assert backups_while_held == []
    assert errors == []
    assert len(operations.list_backups(second)) == 1


def test_cli_run_names_postgres_holder(
    tmp_path: Path, postgres_url: str, unique_prefix: str
) -> None:
    first = backup_settings(tmp_path, data_dir=tmp_path / "first", database_url=postgres_url)
    second = backup_settings(tmp_path, data_dir=tmp_path / "second", database_url=postgres_url)

    with deployment_lock(first, "backup") as held:
        result = CliRunner().invoke(app, ["backup", "run"], env=cli_env(second))

    assert held
    assert result.exit_code == 1
    assert "the backup did not start" in result.output
    assert process_label() in result.output
    assert "backup_deployment_lock_timeout" in result.output
    assert operations.list_backups(second) == []


@pytest.mark.parametrize(
    ("command", "job", "purpose"),
    [
        (["prune"], "backup", "the prune"),
        (["verify"], "verify", "the restore test"),
        (["restore", "20260101T000000Z-0000"], "backup", "the restore"),
    ],
)
def test_cli_commands_name_redis_holder(
    tmp_path: Path,
    redis_url: str,
    unique_prefix: str,
    command: list[str],
    job: str,
    purpose: str,
) -> None:
    first = backup_settings(tmp_path, data_dir=tmp_path / "first", redis_url=redis_url)
    second = backup_settings(tmp_path, data_dir=tmp_path / "second", redis_url=redis_url)

    with deployment_lock(first, job) as held:
        result = CliRunner().invoke(app, ["backup", *command], env=cli_env(second))

    assert held
    assert result.exit_code == 1
    assert f"{purpose} did not start" in result.output
    assert process_label() in result.output


def test_cli_prune_runs_when_lock_free(tmp_path: Path, redis_url: str, unique_prefix: str) -> None:
    settings = backup_settings(tmp_path, redis_url=redis_url)

    result = CliRunner().invoke(app, ["backup", "prune"], env=cli_env(settings))

    assert result.exit_code == 0, result.output
    assert "0 backups deleted" in result.output
    assert redis.Redis.from_url(redis_url).keys(f"{unique_prefix}*") == []


def test_wait_without_shared_lock_runs_at_once(tmp_path: Path) -> None:
    settings = backup_settings(tmp_path)
    ran = False

    with wait_for_deployment_lock(settings, "backup", "the backup"):
        ran = True

    assert ran


def test_wait_times_out_with_busy_error(tmp_path: Path, redis_url: str, unique_prefix: str) -> None:
    first = backup_settings(tmp_path, data_dir=tmp_path / "first", redis_url=redis_url)
    second = backup_settings(
        tmp_path,
        data_dir=tmp_path / "second",
        redis_url=redis_url,
        backup_deployment_lock_timeout=0.2,
    )

    with (
        deployment_lock(first, "backup"),
        pytest.raises(BackupBusy, match="held by llmcloud on") as caught,
        wait_for_deployment_lock(second, "backup", "the backup"),
    ):
        pass

    assert "after 0.2 s of waiting" in caught.value.message


def test_two_instances_take_one_premigration_backup(
    tmp_path: Path, postgres_url: str, unique_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = open_database(postgres_url)
    database.upgrade()
    fill_database(database)
    database.dispose()
    _add_migration(tmp_path, monkeypatch, fails=False)
    instances = [
        backup_settings(tmp_path, data_dir=tmp_path / name, database_url=postgres_url)
        for name in ("first", "second")
    ]
    results: list[MigrationResult] = []
    errors: list[BaseException] = []

    def start(settings: Settings) -> None:
        database = open_database(postgres_url)
        try:
            results.append(migrate_with_backup(settings, database))
        except BaseException as exc:  # the thread hands it to the assert below
            errors.append(exc)
        finally:
            database.dispose()

    workers = [threading.Thread(target=start, args=(settings,)) for settings in instances]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)

    assert errors == []
    assert len(results) == 2
    assert [result.backed_up for result in results].count(True) == 1
    assert all(result.after == NEWER_REVISION for result in results)
    assert len(operations.list_backups(instances[0])) == 1
