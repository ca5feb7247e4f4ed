"""Start-up errors of `llmcloud web`, reported before it listens."""

from __future__ import annotations

import gc
import logging
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from llmcloud.backup import operations
from llmcloud.cli import app as cli_app
from llmcloud.db.errors import DatabaseReadOnly
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
from tests.db.read_only import read_only


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


def test_open_and_migrate_rejects_read_only_database(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    database = open_and_migrate(settings)
    safe_url = database.safe_url
    database.dispose()

    with read_only(database_url), pytest.raises(StartupError) as caught:
        open_and_migrate(settings)

    assert f"the database {safe_url} is read-only" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_open_and_migrate_names_sqlite_fix(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    open_and_migrate(settings).dispose()

    with read_only(f"sqlite:///{tmp_path / 'llmcloud.db'}"), pytest.raises(StartupError) as caught:
        open_and_migrate(settings)

    assert f"make {tmp_path / 'llmcloud.db'}, its folder {tmp_path}" in str(caught.value)
    assert "-wal and -shm files writable by the user that runs llmcloud" in str(caught.value)


def test_app_start_rejects_read_only_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, gateway_backends=[])
    open_and_migrate(settings).dispose()

    with (
        read_only(f"sqlite:///{tmp_path / 'llmcloud.db'}"),
        pytest.raises(DatabaseReadOnly),
        TestClient(create_app(settings)),
    ):
        pass


def test_web_command_exits_on_read_only_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_and_migrate(Settings(data_dir=tmp_path)).dispose()
    monkeypatch.setenv("LLMCLOUD_DATA_DIR", str(tmp_path))
    # A port in use, so that the command fails instead of serving if the check were missing.
    occupied = socket.create_server(("127.0.0.1", 0))
    port = str(occupied.getsockname()[1])

    with occupied, read_only(f"sqlite:///{tmp_path / 'llmcloud.db'}"):
        result = CliRunner().invoke(cli_app, ["web", "--host", "127.0.0.1", "--port", port])

    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"Error: the database sqlite:///{tmp_path / 'llmcloud.db'} is")


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
