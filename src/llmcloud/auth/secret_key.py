"""Secret keys kept as files in `<data_dir>/secrets/`.

Each key is a file of random bytes, created once with mode 0600 in a folder
of mode 0700. Later starts read it back, so values signed with it (cookies,
OAuth state) stay valid across restarts, and backups capture it with the
rest of the data dir. A new key is written to a temporary file and then
hard-linked into place. The link fails when the name exists, so two
processes starting at once end up with the same key, and neither reads a
half-written file.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from pathlib import Path

log = logging.getLogger("llmcloud.auth")

SECRETS_DIR = "secrets"
SESSION_KEY_NAME = "session_key"
KEY_BYTES = 32
_NAME_SHAPE = re.compile(r"[a-z0-9_-]{1,64}")


class SecretKeyError(Exception):
    """A key file exists but cannot be used."""


def load_or_create_secret_key(
    data_dir: Path, name: str = SESSION_KEY_NAME, *, size: int = KEY_BYTES
) -> bytes:
    """Return the key stored as `<data_dir>/secrets/<name>`, creating it on first use.

    Raises SecretKeyError when the file has another length than `size`.
    Permissions looser than 0600 on the file or 0700 on the folder are
    tightened, with a warning.
    """
    if not _NAME_SHAPE.fullmatch(name):
        raise ValueError(f"invalid secret key name {name!r}; expected 1 to 64 of a-z 0-9 _ -")
    directory = data_dir / SECRETS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _restrict_mode(directory, 0o700)

    path = directory / name
    if not path.exists():
        _create_once(path, secrets.token_bytes(size))
    return _read_key(path, size)


def _read_key(path: Path, size: int) -> bytes:
    _restrict_mode(path, 0o600)
    data = path.read_bytes()
    if len(data) != size:
        raise SecretKeyError(
            f"secret key file {path} has {len(data)} bytes; expected {size}. Restore it from "
            "a backup, or delete it to create a new key, which invalidates everything signed "
            "with the old one (for the session key: every login)"
        )
    return data


def _create_once(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another process created the key first; both use that one
        _sync_directory(path.parent)
        log.info("created secret key %s", path)
    finally:
        temporary.unlink(missing_ok=True)


def _restrict_mode(path: Path, allowed: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~allowed:
        log.warning("%s has mode %o, open to other users; changing it to %o", path, mode, allowed)
        path.chmod(allowed)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
