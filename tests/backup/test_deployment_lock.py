"""Scheduled runs happen once per deployment: two schedulers on one PostgreSQL or Redis.

Each scheduler stands for a web instance with its own data dir, and both
back up to the same target, as instances behind one load balancer do. The
tests use the PostgreSQL and Redis servers on 127.0.0.1 and are skipped,
with the connection error as the reason, when one is not reachable.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from llmcloud.backup import operations
from llmcloud.backup.deployment_lock import KEY_PREFIX, deployment_lock, lock_kind
from llmcloud.backup.errors import BackupError
from llmcloud.backup.schedule import _scheduled_backup, _scheduled_verify
from llmcloud.db import open_database
from llmcloud.settings import Settings
from tests.backup.conftest import backup_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
SCHEDULED = datetime(2026, 12, 4, 17, 0, tzinfo=UTC)


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
    """Give this test's Redis lock keys a prefix of their own."""
    prefix = f"{KEY_PREFIX}test-{secrets.token_hex(4)}:"
    monkeypatch.setattr("llmcloud.backup.deployment_lock.KEY_PREFIX", prefix)
    return prefix


def two_instances(tmp_path: Path, **shared: object) -> tuple[Settings, Settings]:
    first = backup_settings(tmp_path, data_dir=tmp_path / "first", **shared)
    second = backup_settings(tmp_path, data_dir=tmp_path / "second", **shared)
    return first, second


def test_postgres_lock_held_makes_second_instance_skip(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.backup")
    first, second = two_instances(tmp_path, database_url=postgres_url)

    with deployment_lock(first, "backup") as held:
        _scheduled_backup(second, SCHEDULED)

    assert lock_kind(second) == "postgresql"
    assert held
    assert "scheduled backup skipped: another instance is taking it" in caplog.text
    assert operations.list_backups(second) == []


def test_postgres_scheduled_backup_runs_once(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.backup")
    database = open_database(postgres_url)
    database.upgrade()
    database.dispose()
    first, second = two_instances(tmp_path, database_url=postgres_url)
    # The scheduled minute must not be older than the backup that the first instance takes.
    minute = datetime.now(UTC).replace(second=0, microsecond=0)

    _scheduled_backup(first, minute)
    _scheduled_backup(second, minute)

    assert len(operations.list_backups(second)) == 1
    assert "another instance took one at or after" in caplog.text


def test_postgres_lock_free_again_after_run(tmp_path: Path, postgres_url: str) -> None:
    first, second = two_instances(tmp_path, database_url=postgres_url)

    with deployment_lock(first, "backup") as first_held:
        pass
    with deployment_lock(second, "backup") as second_held:
        pass

    assert first_held
    assert second_held


def test_redis_lock_held_makes_second_instance_skip(
    tmp_path: Path, redis_url: str, unique_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.backup")
    first, second = two_instances(tmp_path, redis_url=redis_url)

    with deployment_lock(first, "backup") as held, deployment_lock(first, "verify") as verifying:
        lock_keys = redis.Redis.from_url(redis_url).keys(f"{unique_prefix}*")
        _scheduled_backup(second, SCHEDULED)
        _scheduled_verify(second)

    assert lock_kind(second) == "redis"
    assert held
    assert verifying
    assert len(lock_keys) == 2
    assert "scheduled backup skipped: another instance is taking it" in caplog.text
    assert "scheduled restore test skipped: another instance is running it" in caplog.text
    assert operations.list_backups(second) == []


def test_redis_scheduled_backup_runs_once(
    tmp_path: Path, redis_url: str, unique_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.backup")
    first, second = two_instances(tmp_path, redis_url=redis_url)
    minute = datetime.now(UTC).replace(second=0, microsecond=0)

    _scheduled_backup(first, minute)
    _scheduled_backup(second, minute)

    assert len(operations.list_backups(second)) == 1
    assert "another instance took one at or after" in caplog.text
    assert redis.Redis.from_url(redis_url).keys(f"{unique_prefix}*") == []


def test_unreachable_redis_fails_scheduled_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = backup_settings(tmp_path, redis_url="redis://127.0.0.1:9/0")

    with pytest.raises(BackupError, match="check redis_url"), deployment_lock(settings, "backup"):
        pass
    _scheduled_backup(settings, SCHEDULED)

    assert "scheduled backup failed: cannot take the backup lock" in caplog.text
