"""Start-up errors of `llmcloud web`, reported before it listens."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmcloud.backup import operations
from llmcloud.instance import read_instance
from llmcloud.settings import Settings
from llmcloud.web import create_app
from llmcloud.web.server import (
    FULL_COLLECTION_THRESHOLD,
    StartupError,
    open_and_migrate,
    prepare_garbage_collector,
    serve,
)


def test_serve_rejects_unsupported_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="mysql://user@127.0.0.1/chat")
    with pytest.raises(StartupError, match="unsupported database 'mysql'"):
        serve(settings)


def test_serve_reports_unreachable_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/chat")
    with pytest.raises(StartupError, match="cannot open or migrate the database"):
        serve(settings)


def test_serve_rejects_invalid_backup_schedule(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, backup_verify_schedule="every night")

    with pytest.raises(StartupError, match="invalid backup_verify_schedule 'every night'"):
        serve(settings)

    assert not (tmp_path / "llmcloud.db").exists()


def test_open_and_migrate_creates_sqlite_schema(tmp_path: Path) -> None:
    database = open_and_migrate(Settings(data_dir=tmp_path))
    try:
        assert database.current_revision() == database.head_revision()
    finally:
        database.dispose()


def test_open_and_migrate_writes_instance_file(tmp_path: Path) -> None:
    database = open_and_migrate(Settings(data_dir=tmp_path))
    database.dispose()

    assert read_instance(tmp_path) is not None


def test_open_and_migrate_rejects_forgotten_backups(tmp_path: Path) -> None:
    target = str(tmp_path / "target")
    first = Settings(data_dir=tmp_path / "first", backup_targets=[target])
    open_and_migrate(first).dispose()
    operations.backup_and_prune(first)
    lost = Settings(data_dir=tmp_path / "lost", backup_targets=[target])

    with pytest.raises(StartupError, match="llmcloud backup restore"):
        open_and_migrate(lost)

    assert not (tmp_path / "lost" / "llmcloud.db").exists()


def test_served_app_schedules_backups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, gateway_backends=[])
    database = open_and_migrate(settings)
    app = create_app(settings, database=database, schedule_backups=True)
    caplog.set_level(logging.INFO, logger="llmcloud.backup")

    with TestClient(app):
        pass
    database.dispose()

    assert "backup scheduler started" in caplog.text


def test_garbage_collector_freezes_startup_objects() -> None:
    thresholds = gc.get_threshold()
    try:
        prepare_garbage_collector()
        frozen = gc.get_freeze_count()
        full_threshold = gc.get_threshold()[2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)

    assert frozen > 0
    assert full_threshold == FULL_COLLECTION_THRESHOLD
