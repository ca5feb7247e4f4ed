"""The backup operations that commands and the scheduler call, built from settings.

Each function here is one `llmcloud backup ...` command: it builds the
targets and keys from the settings and calls the module that does the work.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyrage import x25519  # type: ignore[import-untyped]

from llmcloud.backup.archive import Progress
from llmcloud.backup.blobs import remove_unused_blobs
from llmcloud.backup.errors import BackupBusy, BackupError
from llmcloud.backup.keys import decryption_identities, passphrase_of
from llmcloud.backup.manifest import Manifest
from llmcloud.backup.retention import RetentionPolicy, backup_time, backups_to_delete
from llmcloud.backup.run import BackupResult, backup_lock, run_backup
from llmcloud.backup.status import read_status
from llmcloud.backup.targets import Target, targets_from_settings
from llmcloud.backup.verify import VerifyResult, load_manifest, verify_backup, with_backup_key
from llmcloud.db import Database
from llmcloud.db.errors import ServiceError
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")


@dataclass(frozen=True)
class BackupListing:
    backup_id: str
    created_at: str
    targets: list[str]


def identities_for(settings: Settings, key_file: Path | None = None) -> list[x25519.Identity]:
    return decryption_identities(settings, key_file)


def policy_from_settings(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=settings.backup_keep_last,
        keep_daily=settings.backup_keep_daily,
        keep_weekly=settings.backup_keep_weekly,
        keep_monthly=settings.backup_keep_monthly,
    )


def backup_and_prune(
    settings: Settings,
    *,
    progress: Progress | None = None,
    on_key_created: Callable[[Path], None] | None = None,
) -> BackupResult:
    """Take a backup, then prune every target by the retention settings."""
    targets = targets_from_settings(settings)
    result = run_backup(settings, targets, progress=progress, on_key_created=on_key_created)
    prune(settings, targets)
    return result


def verify(
    settings: Settings,
    backup_id: str | None = None,
    *,
    key_file: Path | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    targets = targets_from_settings(settings)
    identities = identities_for(settings, key_file)
    return verify_backup(settings, targets, identities, backup_id, progress=progress)


def list_backups(settings: Settings) -> list[BackupListing]:
    """Return every backup on any target, oldest first, with the targets that store it."""
    holders: dict[str, list[str]] = {}
    for target in targets_from_settings(settings):
        for backup_id in target.list_ids():
            holders.setdefault(backup_id, []).append(target.name)
    return [
        BackupListing(backup_id, backup_time(backup_id).isoformat(), names)
        for backup_id, names in sorted(holders.items())
    ]


def show_backup(settings: Settings, backup_id: str, key_file: Path | None = None) -> Manifest:
    """Return the decrypted manifest of a backup, from the first target that stores it."""
    identities = identities_for(settings, key_file)
    passphrase = passphrase_of(settings)
    for target in targets_from_settings(settings):
        if backup_id in target.list_ids():
            with tempfile.TemporaryDirectory(prefix="llmcloud-backup-show-") as scratch:
                folder = _fetch_manifest_only(target, backup_id, Path(scratch))
                keys = with_backup_key(folder, identities, passphrase, backup_id)
                return load_manifest(folder, keys, backup_id)
    raise BackupError(f"backup {backup_id} not found; `llmcloud backup list` shows the ids")


def prune(settings: Settings, targets: list[Target] | None = None) -> list[str]:
    """Delete the backups that retention does not keep, on every target; returns their ids.

    The newest verified backup is never deleted. Model blobs that no
    remaining backup references are deleted afterwards.
    """
    policy = policy_from_settings(settings)
    protected = read_status(settings.data_dir).last_verified_id
    deleted = []
    for target in targets or targets_from_settings(settings):
        for backup_id in backups_to_delete(target.list_ids(), policy, protected):
            target.delete(backup_id)
            log.info("backup %s pruned from %s", backup_id, target.name)
            deleted.append(backup_id)
        _prune_blobs(settings, target)
    return deleted


def _prune_blobs(settings: Settings, target: Target) -> None:
    """Delete the blobs that no remaining backup on `target` references.

    The references are in the encrypted manifests, so a manifest that cannot
    be read stops the blob pruning of that target: deleting then could break it.
    A running backup may have stored blobs whose manifest is not published
    yet, so blobs are pruned only while this process holds the backup lock.
    """
    if not target.list_blobs():
        return
    try:
        with backup_lock(settings.data_dir):
            _prune_blobs_locked(settings, target)
    except BackupBusy:
        log.info(
            "model blobs on %s not pruned now because a backup or verify is running; the next "
            "prune removes them",
            target.name,
        )


def _prune_blobs_locked(settings: Settings, target: Target) -> None:
    referenced: set[str] = set()
    try:
        identities = identities_for(settings)
        passphrase = passphrase_of(settings)
        for backup_id in target.list_ids():
            with tempfile.TemporaryDirectory(prefix="llmcloud-backup-prune-") as scratch:
                folder = _fetch_manifest_only(target, backup_id, Path(scratch))
                keys = with_backup_key(folder, identities, passphrase, backup_id)
                manifest = load_manifest(folder, keys, backup_id)
            referenced |= {blob.object for blob in manifest.blobs}
    except ServiceError as exc:
        log.warning("model blobs on %s not pruned: %s", target.name, exc.message)
        return
    remove_unused_blobs(target, referenced)


def backup_before_migration(settings: Settings, database: Database) -> BackupResult | None:
    """Take a backup when the database exists but is behind the newest schema revision.

    Call it just before `Database.upgrade()` at start-up. Returns None when
    no migration is due (a new database or one already at the newest revision).
    """
    current = database.current_revision()
    if current is None or current == database.head_revision():
        return None
    log.info("database at revision %s will be migrated; taking a backup first", current)
    return backup_and_prune(settings)


def _fetch_manifest_only(target: Target, backup_id: str, scratch: Path) -> Path:
    return target.fetch(backup_id, scratch, manifest_only=True)
