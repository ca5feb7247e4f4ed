"""The age identity that encrypts backups, and the recipients they are encrypted to.

The identity (private key) lives apart from the backups, by default in
`<data_dir>/secrets/backup.age` with mode 0600, in the file format of the
`age` command (`age -d -i backup.age` reads it). A backup is useless without
it, so the operator must keep a copy somewhere other than this machine.
Extra recipients (`backup_recipients`, age public keys) can also decrypt
every backup, for example an offline key kept in a safe.

With `backup_passphrase` set, the identity is instead kept only encrypted
with that passphrase (age's scrypt recipient), in
`<data_dir>/secrets/backup-passphrase-key.age`, and each backup carries a copy
as `key.age`. The passphrase alone then restores a backup, and the standard
tool reads it too: `age -d -i key.age` asks for the passphrase of the
identity file. The archives themselves stay encrypted to an X25519
recipient, because pyrage's passphrase API encrypts in memory only and
archives can be many gigabytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyrage  # type: ignore[import-untyped]
from pyrage import passphrase as age_passphrase
from pyrage import x25519

from llmcloud.backup.errors import BackupError, WrongKey
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

IDENTITY_FILE = Path("secrets") / "backup.age"
# Identities unlocked from passphrase-encrypted files, by a hash of the file and passphrase.
_unlocked: dict[bytes, x25519.Identity] = {}
PASSPHRASE_KEY_FILE = Path("secrets") / "backup-passphrase-key.age"
# The passphrase-encrypted identity as stored beside each backup.
BACKUP_KEY_FILE = "key.age"


@dataclass(frozen=True)
class EncryptionKeys:
    """What a backup is encrypted to, and the passphrase-encrypted key to store beside it."""

    recipients: list[x25519.Recipient]
    passphrase_key_file: Path | None
    created_file: Path | None


def identity_path(settings: Settings) -> Path:
    return settings.backup_identity_file or settings.data_dir / IDENTITY_FILE


def passphrase_of(settings: Settings) -> str | None:
    """Return backup_passphrase, raising BackupError when backup_identity_file is set as well."""
    if settings.backup_passphrase is None:
        return None
    if settings.backup_identity_file is not None:
        raise BackupError(
            "backup_passphrase and backup_identity_file are both set; set only one. A "
            "passphrase replaces the identity file: the backup key is then encrypted to the "
            "passphrase alone, because age allows a passphrase only as the sole recipient of a "
            "file (backup_recipients still apply)"
        )
    return settings.backup_passphrase.get_secret_value()


def decryption_identities(
    settings: Settings, key_file: Path | None = None
) -> list[x25519.Identity]:
    """Return the identities that decrypt backups: `key_file`, else those the settings name.

    With backup_passphrase, the local passphrase key is used when it exists;
    each backup's own key.age, unlocked by the passphrase, is added later.
    """
    if key_file is not None:
        return [load_identity(key_file)]
    passphrase = passphrase_of(settings)
    if passphrase is None:
        return [load_identity(identity_path(settings))]
    path = settings.data_dir / PASSPHRASE_KEY_FILE
    if not path.is_file():
        return []
    return [unlock_passphrase_key(path.read_bytes(), passphrase, str(path))]


def load_or_create_keys(settings: Settings) -> EncryptionKeys:
    """Return the recipients of a new backup, creating the key on the first backup."""
    passphrase = passphrase_of(settings)
    if passphrase is None:
        identity, created = load_or_create_identity(identity_path(settings))
        created_file = identity_path(settings) if created else None
        return EncryptionKeys(recipients_for(identity, settings), None, created_file)

    path = settings.data_dir / PASSPHRASE_KEY_FILE
    created = not path.exists()
    if created:
        _create_passphrase_key(path, passphrase)
    identity = unlock_passphrase_key(path.read_bytes(), passphrase, str(path))
    return EncryptionKeys(recipients_for(identity, settings), path, path if created else None)


def unlock_passphrase_key(data: bytes, passphrase: str, name: str) -> x25519.Identity:
    """Decrypt a passphrase-encrypted identity file; raises WrongKey for a wrong passphrase.

    scrypt makes each decryption take about a second, so identities already
    unlocked in this process are reused.
    """
    cache_key = _unlock_cache_key(data, passphrase)
    identity = _unlocked.get(cache_key)
    if identity is not None:
        return identity
    try:
        text = age_passphrase.decrypt(data, passphrase).decode()
    except (pyrage.DecryptError, UnicodeDecodeError):
        raise WrongKey(
            f"backup_passphrase cannot decrypt {name}: the passphrase is wrong, or the file is "
            "damaged; set backup_passphrase to the passphrase in use when the backup was taken"
        ) from None
    identity = _parse_identity(text, name)
    _unlocked[cache_key] = identity
    return identity


def _unlock_cache_key(data: bytes, passphrase: str) -> bytes:
    digest = hashlib.sha256(data)
    digest.update(b"\0" + passphrase.encode())
    return digest.digest()


def _create_passphrase_key(path: Path, passphrase: str) -> None:
    identity = x25519.Identity.generate()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n"
    encrypted = age_passphrase.encrypt(text.encode(), passphrase)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(encrypted)
    _unlocked[_unlock_cache_key(encrypted, passphrase)] = identity
    log.info("new backup key, encrypted with backup_passphrase, written to %s", path)


def load_identity(path: Path) -> x25519.Identity:
    """Read the identity file; raises BackupError naming the file when missing or invalid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BackupError(
            f"backup key {path} not found; restore it from the copy you exported, "
            "or set backup_identity_file to its path"
        ) from None
    return _parse_identity(text, str(path))


def _parse_identity(text: str, name: str) -> x25519.Identity:
    for line in text.splitlines():
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                return x25519.Identity.from_str(line.strip())
            except Exception:  # pyrage raises its own IdentityError type, not exported for typing
                break
    raise BackupError(f"invalid backup key {name}; expected an age identity (AGE-SECRET-KEY-1...)")


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
