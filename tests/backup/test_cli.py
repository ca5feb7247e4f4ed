from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.backup.targets import ARCHIVE_FILE
from llmcloud.cli import app
from llmcloud.db import Database
from llmcloud.settings import Settings


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("LLMCLOUD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LLMCLOUD_BACKUP_TARGETS", json.dumps(settings.backup_targets))
    return {}


def test_cli_run_list_verify_status(env: dict[str, str], filled: Database) -> None:
    runner = CliRunner()

    ran = runner.invoke(app, ["backup", "run"])
    listed = runner.invoke(app, ["backup", "list", "--json"])
    verified = runner.invoke(app, ["backup", "verify"])
    status = runner.invoke(app, ["backup", "status", "--json"])

    assert ran.exit_code == 0, ran.output
    assert "Copy it somewhere off this machine" in ran.output
    backups = json.loads(listed.stdout)
    assert len(backups) == 1
    assert verified.exit_code == 0, verified.output
    assert json.loads(status.stdout)["last_verified_id"] == backups[0]["backup_id"]


def test_cli_verify_fails_on_corrupt_archive(
    env: dict[str, str], settings: Settings, filled: Database
) -> None:
    runner = CliRunner()
    runner.invoke(app, ["backup", "run"])
    archive = next(Path(settings.backup_targets[0]).glob(f"*/{ARCHIVE_FILE}"))
    archive.write_bytes(archive.read_bytes()[:-100])

    verified = runner.invoke(app, ["backup", "verify"])

    assert verified.exit_code == 1
    assert ARCHIVE_FILE in verified.output


def test_cli_restore_rejects_unknown_id(env: dict[str, str], filled: Database) -> None:
    runner = CliRunner()
    runner.invoke(app, ["backup", "run"])

    restored = runner.invoke(
        app, ["backup", "restore", "20200101T000000Z-abcdef", "--to", "/tmp/x"]
    )

    assert restored.exit_code == 1
    assert "20200101T000000Z-abcdef not found" in restored.output


def test_cli_systemd_units_written(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["backup", "systemd-units", "--output", str(tmp_path / "u")])

    assert result.exit_code == 0, result.output
    assert "backup run" in (tmp_path / "u" / "llmcloud-backup.service").read_text()


def test_cli_restore_with_exported_key(
    env: dict[str, str], settings: Settings, filled: Database, tmp_path: Path
) -> None:
    runner = CliRunner()
    runner.invoke(app, ["backup", "run"])
    exported = runner.invoke(app, ["backup", "export-key"])
    key = tmp_path / "exported.age"
    key.write_text(exported.stdout)
    backup_id = json.loads(runner.invoke(app, ["backup", "list", "--json"]).stdout)[0]["backup_id"]

    restored = runner.invoke(
        app, ["backup", "restore", backup_id, "--to", str(tmp_path / "new"), "--key", str(key)]
    )

    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "new" / "llmcloud.db").is_file()
    assert (tmp_path / "new" / "instance.json").is_file()


def test_cli_passphrase_run_and_restore(
    env: dict[str, str], filled: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCLOUD_BACKUP_PASSPHRASE", "a passphrase for the command line")
    config = tmp_path / "etc" / "llmcloud.toml"
    config.parent.mkdir()
    config.write_text("backup_keep_last = 24\n")
    monkeypatch.setenv("LLMCLOUD_CONFIG", str(config))
    runner = CliRunner()
    ran = runner.invoke(app, ["backup", "run"])
    exported = runner.invoke(app, ["backup", "export-key"])
    backup_id = json.loads(runner.invoke(app, ["backup", "list", "--json"]).stdout)[0]["backup_id"]

    restored = runner.invoke(app, ["backup", "restore", backup_id, "--to", str(tmp_path / "new")])

    assert ran.exit_code == 0, ran.output
    assert exported.exit_code != 0
    assert "keep a copy of the passphrase" in exported.output
    assert restored.exit_code == 0, restored.output
    assert f"which was at {config}" in restored.output
    assert (tmp_path / "new" / "llmcloud.toml.restored").read_text() == config.read_text()


def test_cli_status_without_errors_prints_none(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["backup", "status"])

    lines = result.stdout.splitlines()
    assert result.exit_code == 0, result.output
    assert "last error: none" in lines
    assert "last verify error: none" in lines
    assert "last success at: never" in lines
