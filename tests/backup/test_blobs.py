"""Model blobs in backups: stored once per target, checked by verify, restored, pruned."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmcloud.backup import operations, run
from llmcloud.backup.blobs import CHECKED_FILE
from llmcloud.backup.errors import IntegrityError
from llmcloud.backup.restore import restore_backup
from llmcloud.backup.run import backup_lock
from llmcloud.backup.targets import BLOBS_FOLDER, targets_from_settings
from llmcloud.db import Database
from llmcloud.engine.store import ModelStore
from llmcloud.settings import Settings
from tests.backup.conftest import backup_settings
from tests.engine.gguf_builder import tiny_gguf, write_gguf


def add_model(settings: Settings, name: str, **metadata: object) -> set[str]:
    """Create a model from a tiny GGUF in the data dir's store; return its blob digests."""
    store = ModelStore(settings.models_dir)
    source = write_gguf(settings.data_dir.parent / f"{name}.gguf", tiny_gguf(**metadata))
    digest = store.import_file(source)
    store.create(name, files={"tiny.gguf": digest}, system=f"system prompt of {name}")
    return store.referenced_digests()


def stored_blobs(settings: Settings) -> list[Path]:
    return sorted((Path(settings.backup_targets[0]) / BLOBS_FOLDER).glob("*/sha256-*.age"))


@pytest.fixture
def blob_settings(tmp_path: Path, filled: Database) -> Settings:
    return backup_settings(tmp_path, backup_model_blobs=True)


def test_blobs_stored_once_across_backups(blob_settings: Settings) -> None:
    digests = add_model(blob_settings, "tiny:1")

    first = operations.backup_and_prune(blob_settings)
    inodes = {path: path.stat().st_ino for path in stored_blobs(blob_settings)}
    second = operations.backup_and_prune(blob_settings)

    assert len(inodes) == len(digests)
    assert {path: path.stat().st_ino for path in stored_blobs(blob_settings)} == inodes
    for backup_id in (first.backup_id, second.backup_id):
        manifest = operations.show_backup(blob_settings, backup_id)
        assert {blob.digest for blob in manifest.blobs} == digests


def test_blobs_left_out_when_setting_off(tmp_path: Path, filled: Database) -> None:
    settings = backup_settings(tmp_path)
    add_model(settings, "tiny:1")

    result = operations.backup_and_prune(settings)

    assert stored_blobs(settings) == []
    assert operations.show_backup(settings, result.backup_id).blobs == []
    assert operations.show_backup(settings, result.backup_id).format == 1


def test_verify_checks_every_blob(blob_settings: Settings) -> None:
    digests = add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)

    result = operations.verify(blob_settings)

    assert result.blobs == len(digests)


def test_verify_names_corrupt_blob(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    damaged = max(stored_blobs(blob_settings), key=lambda path: path.stat().st_size)
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0x01
    damaged.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as caught:
        operations.verify(blob_settings)

    assert damaged.name.removesuffix(".age").replace("-", ":", 1) in caught.value.message


def test_verify_names_missing_blob(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    missing = stored_blobs(blob_settings)[0]
    missing.unlink()

    with pytest.raises(IntegrityError) as caught:
        operations.verify(blob_settings)

    assert missing.name in caught.value.message
    assert "missing" in caught.value.message


def corrupt(blob: Path) -> None:
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0x01
    blob.write_bytes(bytes(data))


def test_verify_skips_blobs_checked_recently(blob_settings: Settings) -> None:
    digests = add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    first = operations.verify(blob_settings)
    corrupt(max(stored_blobs(blob_settings), key=lambda path: path.stat().st_size))

    second = operations.verify(blob_settings)

    assert first.blobs_present_only == 0
    assert second.blobs == len(digests)
    assert second.blobs_present_only == len(digests)


def test_verify_with_zero_days_checks_every_blob(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    operations.verify(blob_settings)
    corrupt(max(stored_blobs(blob_settings), key=lambda path: path.stat().st_size))
    every_time = blob_settings.model_copy(update={"backup_verify_blob_days": 0})

    with pytest.raises(IntegrityError, match="is damaged"):
        operations.verify(every_time)


def test_verify_rechecks_blob_after_its_days(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    operations.verify(blob_settings)
    checked = blob_settings.data_dir / CHECKED_FILE
    checked.write_text(checked.read_text().replace(str(datetime.now(UTC).year), "2001"))
    corrupt(max(stored_blobs(blob_settings), key=lambda path: path.stat().st_size))

    with pytest.raises(IntegrityError, match="is damaged"):
        operations.verify(blob_settings)


def test_verify_rechecks_blob_checked_in_future(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    operations.verify(blob_settings)
    checked = blob_settings.data_dir / CHECKED_FILE
    times = json.loads(checked.read_text())
    future = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    for blobs in times.values():
        blobs.update(dict.fromkeys(blobs, future))
    checked.write_text(json.dumps(times))
    corrupt(max(stored_blobs(blob_settings), key=lambda path: path.stat().st_size))

    with pytest.raises(IntegrityError, match="is damaged"):
        operations.verify(blob_settings)


def test_verify_finds_missing_blob_checked_recently(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    operations.verify(blob_settings)
    missing = stored_blobs(blob_settings)[0]
    missing.unlink()

    with pytest.raises(IntegrityError, match="is missing"):
        operations.verify(blob_settings)


def test_unreadable_check_times_mean_full_check(blob_settings: Settings) -> None:
    add_model(blob_settings, "tiny:1")
    operations.backup_and_prune(blob_settings)
    (blob_settings.data_dir / CHECKED_FILE).write_text("{not json")

    result = operations.verify(blob_settings)

    assert result.blobs_present_only == 0


def test_restore_brings_model_back(blob_settings: Settings, filled: Database) -> None:
    digests = add_model(blob_settings, "tiny:1")
    result = operations.backup_and_prune(blob_settings)
    filled.dispose()
    saved_key = blob_settings.data_dir.parent / "backup.age"
    shutil.copy(blob_settings.data_dir / "secrets" / "backup.age", saved_key)
    shutil.rmtree(blob_settings.data_dir)

    identities = operations.identities_for(blob_settings, saved_key)
    restored = restore_backup(
        blob_settings, targets_from_settings(blob_settings), identities, result.backup_id
    )

    store = ModelStore(blob_settings.models_dir)
    assert [entry.name.display for entry in store.list()] == ["tiny:1"]
    assert store.get("tiny:1").system == "system prompt of tiny:1"
    assert {path.name.replace("-", ":", 1) for path in store.blobs.directory.iterdir()} == digests
    assert restored.blobs == len(digests)


def test_restore_with_missing_blob_changes_nothing(blob_settings: Settings, tmp_path: Path) -> None:
    add_model(blob_settings, "tiny:1")
    result = operations.backup_and_prune(blob_settings)
    stored_blobs(blob_settings)[0].unlink()
    other = tmp_path / "restored"

    with pytest.raises(IntegrityError):
        restore_backup(
            blob_settings,
            targets_from_settings(blob_settings),
            operations.identities_for(blob_settings),
            result.backup_id,
            data_dir=other,
        )

    assert not (other / "llmcloud.db").exists()
    assert not (other / "models").exists()


def test_prune_removes_blobs_no_backup_references(
    tmp_path: Path, filled: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ids taken within one second sort by their random suffix, so give them increasing times.
    ids = iter(["20261204T100000Z-000001", "20261204T100100Z-000002"])
    monkeypatch.setattr(run, "new_backup_id", lambda: next(ids))
    settings = backup_settings(
        tmp_path,
        backup_model_blobs=True,
        backup_keep_last=1,
        backup_keep_daily=0,
        backup_keep_weekly=0,
        backup_keep_monthly=0,
    )
    old = add_model(settings, "tiny:1", general__name="old")
    operations.backup_and_prune(settings)
    ModelStore(settings.models_dir).delete("tiny:1")
    new = add_model(settings, "tiny:2", general__name="new")

    operations.backup_and_prune(settings)

    names = {path.name.removesuffix(".age").replace("-", ":", 1) for path in stored_blobs(settings)}
    assert names == new
    assert old - new


def test_prune_keeps_blobs_while_backup_runs(
    tmp_path: Path, filled: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.backup")
    settings = backup_settings(tmp_path, backup_model_blobs=True)
    add_model(settings, "tiny:1")
    operations.backup_and_prune(settings)
    for backup in operations.list_backups(settings):
        targets_from_settings(settings)[0].delete(backup.backup_id)

    with backup_lock(settings.data_dir):
        operations.prune(settings)
    kept = stored_blobs(settings)
    operations.prune(settings)

    assert kept
    assert "not pruned now because a backup or verify is running" in caplog.text
    assert stored_blobs(settings) == []
