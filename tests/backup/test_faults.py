"""Faults of backup runs and restore tests: each fails cleanly, names the piece, loses nothing."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pyrage import x25519

from llmcloud.backup import operations
from llmcloud.backup.errors import BackupError, IntegrityError, WrongKey
from llmcloud.backup.manifest import encrypt_manifest
from llmcloud.backup.status import read_status
from llmcloud.backup.targets import ARCHIVE_FILE, MANIFEST_FILE
from llmcloud.backup.verify import load_manifest
from llmcloud.db import Database
from llmcloud.db.snapshot import SnapshotError
from llmcloud.settings import Settings
from tests.backup.conftest import backup_settings


def test_verify_names_flipped_byte_in_archive(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    archive = settings.backup_targets[0] + f"/{result.backup_id}/{ARCHIVE_FILE}"
    data = bytearray(Path(archive).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(archive).write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=ARCHIVE_FILE):
        operations.verify(settings, result.backup_id)
    assert read_status(settings.data_dir).verify_failures_total == 1


def test_verify_names_missing_archive(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    Path(settings.backup_targets[0], result.backup_id, ARCHIVE_FILE).unlink()

    with pytest.raises(IntegrityError, match=f"{ARCHIVE_FILE} is missing"):
        operations.verify(settings, result.backup_id)


def test_verify_rejects_flipped_byte_in_manifest(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    manifest = Path(settings.backup_targets[0], result.backup_id, MANIFEST_FILE)
    data = bytearray(manifest.read_bytes())
    data[-5] ^= 0x01
    manifest.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=MANIFEST_FILE):
        operations.verify(settings, result.backup_id)


def test_verify_rejects_wrong_key(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    other_key = settings.data_dir.parent / "other.age"
    other_key.write_text(f"{x25519.Identity.generate()}\n")

    with pytest.raises(WrongKey, match="another key"):
        operations.verify(settings, result.backup_id, key_file=other_key)


def test_verify_names_file_that_differs_from_manifest(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    identities = operations.identities_for(settings)
    folder = Path(settings.backup_targets[0], result.backup_id)
    manifest = load_manifest(folder, identities, result.backup_id)
    files = [
        replace(record, sha256="0" * 64) if record.path.endswith("file.txt") else record
        for record in manifest.files
    ]
    altered = replace(manifest, files=files)
    recipients = [identity.to_public() for identity in identities]
    (folder / MANIFEST_FILE).write_bytes(encrypt_manifest(altered, recipients))

    with pytest.raises(IntegrityError, match=r"data/uploads/a/file\.txt does not match"):
        operations.verify(settings, result.backup_id)


def test_unreachable_target_fails_run_and_keeps_success_time(
    tmp_path: Path, filled: Database, settings: Settings
) -> None:
    operations.backup_and_prune(settings)
    first_success = read_status(settings.data_dir).last_success_at
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    broken = backup_settings(tmp_path, backup_targets=[*settings.backup_targets, str(blocked)])

    with pytest.raises(BackupError, match="blocked"):
        operations.backup_and_prune(broken)

    status = read_status(settings.data_dir)
    assert status.last_success_at == first_success
    assert status.failures_total == 1
    assert len(operations.list_backups(settings)) == 2


def test_full_disk_fails_run_cleanly(tmp_path: Path, filled: Database) -> None:
    """A target that cannot take the file (here /dev/full) fails with the OS error named."""
    settings = backup_settings(tmp_path)
    operations.backup_and_prune(settings)
    real_copy = __import__("shutil").copyfile

    def copy_to_full_disk(source: object, target: object) -> object:
        return real_copy(source, "/dev/full")  # type: ignore[arg-type]

    def cross_device_link(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("llmcloud.backup.targets.shutil.copyfile", copy_to_full_disk)
        patch.setattr("llmcloud.backup.targets.os.link", cross_device_link)
        with pytest.raises(BackupError, match="No space left on device"):
            operations.backup_and_prune(settings)

    assert len(operations.list_backups(settings)) == 1
    assert not list(Path(settings.backup_targets[0]).glob(".*.partial"))
    assert operations.verify(settings).backup_id == operations.list_backups(settings)[0].backup_id


def test_locked_database_makes_backup_wait_then_fail(settings: Settings, filled: Database) -> None:
    filled.dispose()
    holder = sqlite3.connect(settings.data_dir / "llmcloud.db")
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(SnapshotError, match="waited up to 2 s"):
            operations.backup_and_prune(settings)
    finally:
        holder.rollback()
        holder.close()
    assert time.monotonic() - started >= 2.0
    assert read_status(settings.data_dir).last_success_at is None


def test_backups_under_a_busy_writer_are_consistent(settings: Settings, filled: Database) -> None:
    """A writer commits a row to two tables every millisecond; each backup has equal counts."""
    database_file = settings.data_dir / "llmcloud.db"
    setup = sqlite3.connect(database_file, isolation_level=None)
    setup.execute("CREATE TABLE ticks (id INTEGER PRIMARY KEY, payload TEXT)")
    setup.execute("CREATE TABLE tocks (id INTEGER PRIMARY KEY, payload TEXT)")
    setup.close()
    stop = threading.Event()

    def write_every_millisecond() -> None:
        connection = sqlite3.connect(database_file, isolation_level=None, timeout=10)
        while not stop.is_set():
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO ticks (payload) VALUES (?)", ("x" * 200,))
            connection.execute("INSERT INTO tocks (payload) VALUES (?)", ("y" * 200,))
            connection.execute("COMMIT")
            time.sleep(0.001)
        connection.close()

    thread = threading.Thread(target=write_every_millisecond)
    thread.start()
    try:
        time.sleep(0.2)
        results = [operations.backup_and_prune(settings) for _ in range(3)]
    finally:
        stop.set()
        thread.join()

    for result in results:
        counts = operations.verify(settings, result.backup_id).row_counts
        assert counts["ticks"] == counts["tocks"]
        assert counts["ticks"] > 0


KILLED_RUN = """
import sys, time
from pathlib import Path
from llmcloud.backup import operations
from llmcloud.backup import archive
from llmcloud.settings import Settings

real = archive.TarWriter.add_file
def slow_add(*args, **kwargs):
    record = real(*args, **kwargs)
    Path(sys.argv[2]).touch()
    time.sleep(60)
    return record
archive.TarWriter.add_file = slow_add
operations.backup_and_prune(Settings(data_dir=sys.argv[1], backup_targets=[sys.argv[3]]))
"""


def test_killed_run_leaves_nothing_that_looks_valid(
    settings: Settings, filled: Database, tmp_path: Path
) -> None:
    operations.backup_and_prune(settings)
    started = tmp_path / "started"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            str(settings.data_dir),
            str(started),
            settings.backup_targets[0],
        ],
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")},
    )
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert started.exists()
    assert len(operations.list_backups(settings)) == 1
    assert operations.backup_and_prune(settings).backup_id
    assert not (settings.data_dir / "backup-staging").exists()


def test_verify_removes_scratch_left_by_killed_run(settings: Settings, filled: Database) -> None:
    operations.backup_and_prune(settings)
    stale = settings.data_dir / "backup-scratch-left"
    (stale / "unpacked").mkdir(parents=True)

    operations.verify(settings)

    assert not stale.exists()
    assert not list(settings.data_dir.glob("backup-scratch-*"))
