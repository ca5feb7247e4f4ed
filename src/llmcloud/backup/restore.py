"""Restoring a backup into a data dir, and the start-up check for a data dir that was lost.

A restore unpacks and checks the whole backup in a scratch folder first, so
a damaged backup changes nothing. It writes only into a new or empty data
dir, unless forced; a forced restore over a live data dir takes a backup of
it first.

A settings file that lived inside the data dir is archived under its path
there and so comes back under its own name. One that lived elsewhere (such
as /etc/llmcloud/llmcloud.toml) is written as `llmcloud.toml.restored` in the
data dir instead, because a restore writes only into the data dir, and the
result names both paths so the operator can move it into place.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyrage import x25519  # type: ignore[import-untyped]

from llmcloud.backup.archive import Progress
from llmcloud.backup.errors import BackupError
from llmcloud.backup.keys import identity_path, passphrase_of
from llmcloud.backup.run import (
    CONFIG_ENTRY,
    DATA_FOLDERS,
    DATA_PREFIX,
    LOCK_FILE,
    backup_lock,
    run_backup,
)
from llmcloud.backup.targets import Target
from llmcloud.backup.verify import find_backup, scratch_folder, unpack_backup
from llmcloud.db import database_url_from_settings, open_database
from llmcloud.db.database import DATABASE_FILE
from llmcloud.db.snapshot import SnapshotKind, restore_snapshot
from llmcloud.instance import INSTANCE_FILE
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

# Files and folders of a data dir that a restore replaces.
RESTORED_ITEMS = (DATABASE_FILE, f"{DATABASE_FILE}-wal", f"{DATABASE_FILE}-shm", INSTANCE_FILE)
RESTORED_CONFIG_NAME = "llmcloud.toml.restored"


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    data_dir: Path
    safety_backup_id: str | None
    # Where the settings file was written, and where it was when the backup was taken.
    config_file: Path | None
    original_config_file: str | None = None
    blobs: int = 0

    @property
    def config_in_place(self) -> bool:
        """Whether the settings file came back under its own name inside the data dir."""
        return self.config_file is not None and self.config_file.name != RESTORED_CONFIG_NAME


def is_live(data_dir: Path) -> bool:
    """Return whether the data dir contains an instance or a database."""
    return (data_dir / INSTANCE_FILE).exists() or (data_dir / DATABASE_FILE).exists()


def restore_backup(
    settings: Settings,
    targets: list[Target],
    identities: list[x25519.Identity],
    backup_id: str,
    *,
    data_dir: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore backup `backup_id` into `data_dir` (default: the configured data dir).

    Raises BackupError for a live data dir (or a configured PostgreSQL
    database with tables) unless `force` is set; then the live data is
    backed up first, to the same targets.
    """
    destination = data_dir or settings.data_dir
    if destination.exists() and not destination.is_dir():
        raise BackupError(
            f"data dir {destination} is not a folder; restore into a new or empty folder "
            "with --to DIR"
        )
    safety_backup_id = None
    if is_live(destination) or _postgres_has_tables(settings):
        if not force:
            raise BackupError(
                f"data dir {destination} (or its database) is in use; restore into a new or "
                "empty folder with --to DIR, or pass --force to replace it after a backup of it"
            )
        safety_backup_id = run_backup(_settings_for(settings, destination), targets).backup_id
        log.warning("backup %s taken before the forced restore", safety_backup_id)

    target, found_id = find_backup(targets, backup_id)
    created = not destination.exists()
    had_lock_file = (destination / LOCK_FILE).exists()
    destination.mkdir(parents=True, exist_ok=True)
    # Unpacking inside the destination lets every restored file be moved into place by rename.
    passphrase = passphrase_of(settings)
    try:
        with backup_lock(destination), scratch_folder(destination) as scratch:
            manifest, unpacked = unpack_backup(
                target,
                found_id,
                identities,
                scratch,
                progress,
                passphrase=passphrase,
                blobs_into=unpacked_blobs(scratch),
            )
            _replace_data(unpacked / "data", destination)
            _restore_database(
                settings, destination, unpacked / manifest.database_file, manifest.database_kind
            )
            config_file = _restore_config(unpacked, destination, manifest.settings_entry)
    except BaseException:
        _remove_lock_left(destination, created=created, had_lock_file=had_lock_file)
        raise

    log.info("backup %s restored into %s", found_id, destination)
    return RestoreResult(
        found_id,
        destination,
        safety_backup_id,
        config_file,
        manifest.settings_file,
        len(manifest.blobs),
    )


def _remove_lock_left(destination: Path, *, created: bool, had_lock_file: bool) -> None:
    """Remove the lock file that a failed restore made, and the folder when it made that too."""
    if not had_lock_file:
        (destination / LOCK_FILE).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            destination.rmdir()  # only when empty: a failure after files moved in keeps them


def unpacked_blobs(scratch: Path) -> Path:
    """Return where unpacked model blobs go, so that the data's move puts them in the store."""
    return scratch / "unpacked" / "data" / "models" / "blobs"


def check_data_dir_at_start(settings: Settings, targets: list[Target]) -> None:
    """Raise BackupError when the data dir is empty but a configured target stores backups.

    A lost data dir must not silently become a fresh instance. Creating an
    empty instance.json, or restoring, lets the service start.
    """
    # A PostgreSQL database with tables is the instance's state, for example for a second
    # web instance that starts on a new machine beside the first.
    if is_live(settings.data_dir) or _postgres_has_tables(settings):
        return
    for target in targets:
        try:
            ids = target.list_ids()
        except BackupError as exc:
            log.warning("cannot list backups on %s at start-up: %s", target.name, exc.message)
            continue
        if ids:
            raise BackupError(
                f"data dir {settings.data_dir} is empty, but {target.name} stores backups of an "
                f"instance (newest {ids[-1]}). Restore it with `llmcloud backup restore "
                f"{ids[-1]}`, or to start a new instance on purpose run `llmcloud backup "
                "start-fresh`"
            )


def _settings_for(settings: Settings, destination: Path) -> Settings:
    """Return settings that back up `destination` (and the configured database) before a restore.

    The backup is encrypted to the configured key, not to one in `destination`, whose
    secrets/ the restore replaces.
    """
    # NOTE: in the configured data dir the default key, secrets/backup.age, is replaced by
    # the restored copy. A safety backup encrypted to a key created or rotated since that
    # backup can then only be decrypted with a copy of the key exported beforehand.
    if destination == settings.data_dir:
        return settings
    changes: dict[str, object] = {"data_dir": destination}
    if settings.backup_passphrase is None:
        changes["backup_identity_file"] = identity_path(settings)
    return settings.model_copy(update=changes)


def _replace_data(source: Path, destination: Path) -> None:
    for name in (*RESTORED_ITEMS, *DATA_FOLDERS):
        existing = destination / name
        if existing.is_dir():
            shutil.rmtree(existing)
        else:
            existing.unlink(missing_ok=True)
    if not source.is_dir():
        return
    for item in sorted(source.iterdir()):
        target = destination / item.name
        if item.is_dir() and target.exists():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            # A rename when scratch and destination share a filesystem, else a copy.
            shutil.move(item, target)


def _restore_database(
    settings: Settings, destination: Path, snapshot_file: Path, kind: str
) -> None:
    snapshot_kind: SnapshotKind = "sqlite" if kind == "sqlite" else "pg_dump"
    if snapshot_kind == "sqlite":
        url = f"sqlite:///{destination / DATABASE_FILE}"
    else:
        url = database_url_from_settings(settings)
        if settings.database_url is None:
            raise BackupError(
                "the backup contains a PostgreSQL dump, but database_url is unset; set it to the "
                "database to restore into"
            )
    restore_snapshot(snapshot_file, snapshot_kind, url)


def _restore_config(unpacked: Path, destination: Path, entry: str | None) -> Path | None:
    """Return where the settings file is now: put back by `_replace_data`, or written here."""
    if entry is None:
        # Backups from before the entry was recorded kept the file in one place only.
        entry = CONFIG_ENTRY if (unpacked / CONFIG_ENTRY).is_file() else None
    if entry is None:
        return None
    if entry.startswith(DATA_PREFIX):
        return destination / entry.removeprefix(DATA_PREFIX)
    target = destination / RESTORED_CONFIG_NAME
    shutil.copyfile(unpacked / entry, target)
    return target


def _postgres_has_tables(settings: Settings) -> bool:
    if settings.database_url is None:
        return False
    database = open_database(settings.database_url.get_secret_value())
    try:
        return database.current_revision() is not None
    finally:
        database.dispose()
