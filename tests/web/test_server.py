"""Start-up errors of `llmcloud web`, reported before it listens."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from llmcloud.settings import Settings
from llmcloud.web.server import StartupError, freeze_startup_objects, open_and_migrate, serve


def test_serve_rejects_unsupported_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="mysql://user@127.0.0.1/chat")
    with pytest.raises(StartupError, match="unsupported database 'mysql'"):
        serve(settings)


def test_serve_reports_unreachable_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/chat")
    with pytest.raises(StartupError, match="cannot open or migrate the database"):
        serve(settings)


def test_open_and_migrate_creates_sqlite_schema(tmp_path: Path) -> None:
    database = open_and_migrate(Settings(data_dir=tmp_path))
    try:
        assert database.current_revision() == database.head_revision()
    finally:
        database.dispose()


def test_freeze_startup_objects_freezes_them() -> None:
    try:
        freeze_startup_objects()
        frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()

    assert frozen > 0
