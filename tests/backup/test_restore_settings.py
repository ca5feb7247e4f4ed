"""Where a restore puts the settings file, and what it tells the operator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmcloud.backup import operations
from llmcloud.backup.restore import RESTORED_CONFIG_NAME, RestoreResult, restore_backup
from llmcloud.backup.targets import targets_from_settings
from llmcloud.cli.backup import restored_config_message
from llmcloud.db import Database
from llmcloud.settings import Settings

CONFIG_TEXT = "backup_keep_last = 24\n"


def _restore_after_loss(
    settings: Settings, key_copy: Path, data_dir: Path | None = None
) -> RestoreResult:
    result = operations.backup_and_prune(settings)
    shutil.copy(settings.data_dir / "secrets" / "backup.age", key_copy)
    shutil.rmtree(settings.data_dir)
    identities = operations.identities_for(settings, key_copy)
    return restore_backup(
        settings, targets_from_settings(settings), identities, result.backup_id, data_dir=data_dir
    )


def test_settings_file_in_data_dir_restored_in_place(
    settings: Settings, filled: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = settings.data_dir / "llmcloud.toml"
    config.write_text(CONFIG_TEXT)
    monkeypatch.setenv("LLMCLOUD_CONFIG", str(config))
    filled.dispose()

    result = _restore_after_loss(settings, tmp_path / "backup.age")

    assert config.read_text() == CONFIG_TEXT
    assert result.config_file == config
    assert result.config_in_place
    assert not (settings.data_dir / RESTORED_CONFIG_NAME).exists()
    assert str(config) in (restored_config_message(result) or "")


def test_settings_file_in_data_dir_follows_restore_target(
    settings: Settings, filled: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = settings.data_dir / "conf" / "llmcloud.toml"
    config.parent.mkdir()
    config.write_text(CONFIG_TEXT)
    monkeypatch.setenv("LLMCLOUD_CONFIG", str(config))
    filled.dispose()
    other = tmp_path / "other"

    result = _restore_after_loss(settings, tmp_path / "backup.age", other)

    assert (other / "conf" / "llmcloud.toml").read_text() == CONFIG_TEXT
    assert result.config_file == other / "conf" / "llmcloud.toml"


def test_settings_file_elsewhere_written_beside_data(
    settings: Settings, filled: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "etc" / "llmcloud.toml"
    config.parent.mkdir()
    config.write_text(CONFIG_TEXT)
    monkeypatch.setenv("LLMCLOUD_CONFIG", str(config))
    filled.dispose()

    result = _restore_after_loss(settings, tmp_path / "backup.age")
    message = restored_config_message(result) or ""

    assert result.config_file == settings.data_dir / RESTORED_CONFIG_NAME
    assert result.config_file.read_text() == CONFIG_TEXT
    assert not result.config_in_place
    assert result.original_config_file == str(config)
    assert f"was at {config}" in message
    assert f"written to {result.config_file}" in message
    assert "move it there" in message


def test_restore_without_settings_file_reports_none(
    settings: Settings, filled: Database, tmp_path: Path
) -> None:
    filled.dispose()

    result = _restore_after_loss(settings, tmp_path / "backup.age")

    assert result.config_file is None
    assert restored_config_message(result) is None
