"""The age identity that encrypts backups, and the recipients they are encrypted to.

The identity (private key) lives apart from the backups, by default in
`<data_dir>/secrets/backup.age` with mode 0600, in the file format of the
`age` command (`age -d -i backup.age` reads it). A backup is useless without
it, so the operator must keep a copy somewhere other than this machine.
Extra recipients (`backup_recipients`, age public keys) can also decrypt
every backup, for example an offline key kept in a safe.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from pyrage import x25519  # type: ignore[import-untyped]

from llmcloud.backup.errors import BackupError
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

IDENTITY_FILE = Path("secrets") / "backup.age"


def identity_path(settings: Settings) -> Path:
    return settings.backup_identity_file or settings.data_dir / IDENTITY_FILE


def load_identity(path: Path) -> x25519.Identity:
    """Read the identity file; raises BackupError naming the file when missing or invalid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BackupError(
            f"backup key {path} not found; restore it from the copy you exported, "
            "or set backup_identity_file to its path"
        ) from None
    for line in text.splitlines():
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                return x25519.Identity.from_str(line.strip())
            except Exception:  # pyrage raises its own IdentityError type, not exported for typing
                break
    raise BackupError(f"invalid backup key {path}; expected an age identity (AGE-SECRET-KEY-1...)")


def load_or_create_identity(path: Path) -> tuple[x25519.Identity, bool]:
    """Return the identity, creating a new one (mode 0600) when the file does not exist.

    The second value is True when the key was created just now.
    """
    if path.exists():
        return load_identity(path), False

    identity = x25519.Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    log.warning(
        "new backup key written to %s; copy it somewhere off this machine, because backups "
        "cannot be restored without it",
        path,
    )
    return identity, True


def recipients_for(identity: x25519.Identity, settings: Settings) -> list[x25519.Recipient]:
    recipients = [identity.to_public()]
    for text in settings.backup_recipients:
        try:
            recipients.append(x25519.Recipient.from_str(text.strip()))
        except Exception:  # pyrage's RecipientError
            raise BackupError(
                f"invalid backup recipient {text!r}; expected an age public key (age1...)"
            ) from None
    return recipients
