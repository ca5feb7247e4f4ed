"""Backups encrypted with a passphrase instead of an identity file."""

from __future__ import annotations

import logging
import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

from llmcloud.backup import operations
from llmcloud.backup.errors import BackupError, WrongKey
from llmcloud.backup.keys import PASSPHRASE_KEY_FILE
from llmcloud.backup.restore import restore_backup
from llmcloud.backup.targets import ARCHIVE_FILE, KEY_FILE, targets_from_settings
from llmcloud.db import Database, open_database
from tests.backup.conftest import backup_settings, dump_tables

PASSPHRASE = "correct horse battery staple"


def test_passphrase_round_trip(tmp_path: Path, filled: Database) -> None:
    settings = backup_settings(tmp_path, backup_passphrase=PASSPHRASE)
    before = dump_tables(filled)
    result = operations.backup_and_prune(settings)
    filled.dispose()
    shutil.rmtree(settings.data_dir)

    # A new machine has nothing but the passphrase: no local key file at all.
    identities = operations.identities_for(settings)
    restore_backup(settings, targets_from_settings(settings), identities, result.backup_id)

    restored = open_database(f"sqlite:///{settings.data_dir / 'llmcloud.db'}")
    try:
        assert dump_tables(restored) == before
    finally:
        restored.dispose()
    assert identities == []
    assert not (settings.data_dir / "secrets" / "backup.age").exists()


def test_passphrase_backup_verifies(
    tmp_path: Path, filled: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = backup_settings(tmp_path, backup_passphrase=PASSPHRASE)
    result = operations.backup_and_prune(settings)

    verified = operations.verify(settings)

    assert verified.backup_id == result.backup_id
    assert Path(settings.backup_targets[0], result.backup_id, KEY_FILE).is_file()
    assert (settings.data_dir / PASSPHRASE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert PASSPHRASE not in caplog.text
    assert PASSPHRASE not in repr(settings)


def test_wrong_passphrase_fails_verify(tmp_path: Path, filled: Database) -> None:
    operations.backup_and_prune(backup_settings(tmp_path, backup_passphrase=PASSPHRASE))
    (tmp_path / "data" / PASSPHRASE_KEY_FILE).unlink()
    wrong = backup_settings(tmp_path, backup_passphrase="not the passphrase")

    with pytest.raises(WrongKey) as caught:
        operations.verify(wrong)

    assert "backup_passphrase cannot decrypt" in caught.value.message
    assert KEY_FILE in caught.value.message


def test_changed_passphrase_fails_run(tmp_path: Path, filled: Database) -> None:
    operations.backup_and_prune(backup_settings(tmp_path, backup_passphrase=PASSPHRASE))

    with pytest.raises(WrongKey, match=str(PASSPHRASE_KEY_FILE)):
        operations.backup_and_prune(backup_settings(tmp_path, backup_passphrase="changed"))


def test_passphrase_and_identity_file_rejected(tmp_path: Path, filled: Database) -> None:
    settings = backup_settings(
        tmp_path, backup_passphrase=PASSPHRASE, backup_identity_file=tmp_path / "key.age"
    )

    with pytest.raises(BackupError) as caught:
        operations.backup_and_prune(settings)

    assert "both set" in caught.value.message
    assert "sole recipient" in caught.value.message


@pytest.mark.skipif(shutil.which("age") is None, reason="age is not installed")
def test_passphrase_backup_decrypts_with_age(tmp_path: Path, filled: Database) -> None:
    settings = backup_settings(tmp_path, backup_passphrase=PASSPHRASE)
    result = operations.backup_and_prune(settings)
    folder = Path(settings.backup_targets[0], result.backup_id)
    plain = tmp_path / "data.tar.zst"

    # age reads the passphrase of an encrypted identity file only from a terminal.
    output, status = _run_in_terminal(
        ["age", "-d", "-i", str(folder / KEY_FILE), "-o", str(plain), str(folder / ARCHIVE_FILE)],
        PASSPHRASE,
    )
    listing = subprocess.run(
        ["tar", "--zstd", "-t", "-f", str(plain)], capture_output=True, text=True, check=True
    )

    assert status == 0, output
    assert "data/uploads/a/file.txt" in listing.stdout.splitlines()


def _run_in_terminal(command: list[str], answer: str) -> tuple[bytes, int]:
    """Run `command` on a new pseudo-terminal, typing `answer` at its passphrase prompt."""
    pid, terminal = pty.fork()
    if pid == 0:
        os.execvp(command[0], command)
    output, answered = b"", False
    while True:
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"passphrase" in output.lower():
            os.write(terminal, answer.encode() + b"\n")
            answered = True
    os.close(terminal)
    _, status = os.waitpid(pid, 0)
    return output, os.waitstatus_to_exitcode(status)
