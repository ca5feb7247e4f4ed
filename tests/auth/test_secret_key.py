from __future__ import annotations

import logging
import re
import stat
import threading
from pathlib import Path

import pytest

from llmcloud.auth.secret_key import SecretKeyError, load_or_create_secret_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_key_survives_restart(tmp_path: Path) -> None:
    first = load_or_create_secret_key(tmp_path)
    assert load_or_create_secret_key(tmp_path) == first


def test_secret_key_has_32_bytes(tmp_path: Path) -> None:
    assert len(load_or_create_secret_key(tmp_path)) == 32


def test_secret_key_names_give_different_keys(tmp_path: Path) -> None:
    assert load_or_create_secret_key(tmp_path, "backup_key") != load_or_create_secret_key(tmp_path)


def test_secret_key_file_is_private(tmp_path: Path) -> None:
    load_or_create_secret_key(tmp_path)
    assert _mode(tmp_path / "secrets") == 0o700
    assert _mode(tmp_path / "secrets" / "session_key") == 0o600


def test_secret_key_tightens_loose_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_or_create_secret_key(tmp_path)
    path = tmp_path / "secrets" / "session_key"
    path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="llmcloud.auth")

    load_or_create_secret_key(tmp_path)

    assert _mode(path) == 0o600
    assert caplog.records[0].name == "llmcloud.auth"
    assert "open to other users" in caplog.records[0].getMessage()


def test_secret_key_rejects_truncated_file(tmp_path: Path) -> None:
    load_or_create_secret_key(tmp_path)
    path = tmp_path / "secrets" / "session_key"
    path.write_bytes(b"short")
    with pytest.raises(SecretKeyError, match=re.escape(f"{path} has 5 bytes; expected 32")):
        load_or_create_secret_key(tmp_path)


def test_secret_key_rejects_bad_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("invalid secret key name '../x'")):
        load_or_create_secret_key(tmp_path, "../x")


def test_secret_key_concurrent_creation_agrees(tmp_path: Path) -> None:
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        keys.append(load_or_create_secret_key(tmp_path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["session_key"]
