"""Taking a backup: snapshot, archive, encrypt, publish to every target, prune.

One run at a time per data dir: the run holds an exclusive lock on
`<data_dir>/backup.lock` (verify takes the same lock). The staging folder
under the data dir stores the encrypted files until every target has them,
and is emptied at the start of the next run if a killed process left it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from llmcloud.backup.archive import Progress, write_archive
from llmcloud.backup.blobs import BlobRecord, local_blobs, store_blobs
from llmcloud.backup.errors import BackupBusy, BackupError
from llmcloud.backup.keys import EncryptionKeys, load_or_create_keys
from llmcloud.backup.manifest import Manifest, encrypt_manifest
from llmcloud.backup.retention import ID_TIME_FORMAT
from llmcloud.backup.status import read_status, update_status
from llmcloud.backup.targets import ARCHIVE_FILE, KEY_FILE, MANIFEST_FILE, FolderTarget, Target
from llmcloud.db import database_url_from_settings, open_database
from llmcloud.db.errors import ServiceError
from llmcloud.db.snapshot import snapshot_database
from llmcloud.instance import load_or_create_instance
from llmcloud.settings import CONFIG_ENV, Settings, default_config_file

log = logging.getLogger("llmcloud.backup")

LOCK_FILE = "backup.lock"
STAGING_DIR = "backup-staging"
# Parts of the data dir that a backup captures, besides the database and instance.json.
DATA_FOLDERS = ("secrets", "certs", "uploads", "models/manifests")
# Where the settings file goes in the archive when it lives outside the data dir.
CONFIG_ENTRY = "config/llmcloud.toml"
# Archive names under this prefix are paths inside the data dir.
DATA_PREFIX = "data/"


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    size: int
    archive_size: int
    duration_seconds: float
    targets: list[str]
    warnings: list[str]


@contextmanager
def backup_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's backup lock, or raise BackupBusy when another run holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupBusy(
                f"another backup or verify is running on {data_dir}; wait for it to finish"
            ) from None
        yield


def new_backup_id(now: datetime | None = None) -> str:
    """Return an id that sorts by time: the UTC second, then six hex digits.

    The first three digits are the milliseconds (000 to 3e7), so that backups
    taken within one second sort in order, and the last three are random.
    """
    moment = now or datetime.now(UTC)
    milliseconds = moment.microsecond // 1000
    return f"{moment.strftime(ID_TIME_FORMAT)}-{milliseconds:03x}{secrets.randbelow(4096):03x}"


def run_backup(
    settings: Settings,
    targets: list[Target],
    *,
    progress: Progress | None = None,
    on_key_created: Callable[[Path], None] | None = None,
) -> BackupResult:
    """Take one backup and publish it to every target; records the outcome in the status file.

    Raises BackupError when any step or any target fails. The last-success
    time then stays where it was, and every older backup is left intact.
    """
    started = time.monotonic()
    try:
        with backup_lock(settings.data_dir):
            result = _run_locked(settings, targets, started, progress, on_key_created)
    except BackupBusy:
        raise
    except ServiceError as exc:
        _record_failure(settings.data_dir, exc.message)
        raise
    except OSError as exc:
        message = f"backup failed: {exc}; check free space and permissions of the named path"
        _record_failure(settings.data_dir, message)
        raise BackupError(message) from None

    update_status(
        settings.data_dir,
        last_success_at=datetime.now(UTC).isoformat(),
        last_backup_id=result.backup_id,
        last_duration_seconds=result.duration_seconds,
        last_size_bytes=result.archive_size,
    )
    log.info(
        "backup %s finished in %.1f s: %d bytes to %s",
        result.backup_id,
        result.duration_seconds,
        result.archive_size,
        ", ".join(result.targets),
    )
    return result


def warnings_for_targets(settings: Settings, targets: list[Target]) -> list[str]:
    """Return a warning for each folder target on the same filesystem as the data dir."""
    warnings = []
    data_device = os.stat(settings.data_dir).st_dev
    for target in targets:
        if isinstance(target, FolderTarget) and _device_of(target.root) == data_device:
            warnings.append(
                f"backup target {target.name} is on the same filesystem as the data dir "
                f"{settings.data_dir}, so it is not a separate copy; add a target on another "
                "disk, share or object store to backup_targets"
            )
    return warnings


def _run_locked(
    settings: Settings,
    targets: list[Target],
    started: float,
    progress: Progress | None,
    on_key_created: Callable[[Path], None] | None,
) -> BackupResult:
    if not targets:
        raise BackupError("no backup target configured; set backup_targets")
    warnings = warnings_for_targets(settings, targets)
    for warning in warnings:
        log.warning("%s", warning)

    keys = load_or_create_keys(settings)
    if keys.created_file is not None and on_key_created is not None:
        on_key_created(keys.created_file)
    instance = load_or_create_instance(settings.data_dir)

    staging_root = settings.data_dir / STAGING_DIR
    shutil.rmtree(staging_root, ignore_errors=True)
    backup_id = new_backup_id()
    staged = staging_root / backup_id
    failures: dict[str, str] = {}
    try:
        staged.mkdir(parents=True)
        blobs = _store_model_blobs(settings, targets, keys, staging_root, failures, progress)
        manifest = _build(settings, backup_id, instance.id, staged, keys, blobs, progress)
        published = _publish(backup_id, staged, targets, failures)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)

    return BackupResult(
        backup_id=backup_id,
        size=manifest.total_size,
        archive_size=manifest.archive.size,
        duration_seconds=time.monotonic() - started,
        targets=published,
        warnings=warnings,
    )


def _store_model_blobs(
    settings: Settings,
    targets: list[Target],
    keys: EncryptionKeys,
    staging_root: Path,
    failures: dict[str, str],
    progress: Progress | None,
) -> list[BlobRecord]:
    if not settings.backup_model_blobs:
        return []
    return store_blobs(
        local_blobs(settings), targets, keys.recipients, staging_root, failures, progress
    )


def _build(
    settings: Settings,
    backup_id: str,
    instance_id: str,
    staged: Path,
    keys: EncryptionKeys,
    blobs: list[BlobRecord],
    progress: Progress | None,
) -> Manifest:
    created_at = datetime.now(UTC).isoformat()
    database = open_database(database_url_from_settings(settings))
    try:
        snapshot = snapshot_database(
            database, staged / "snapshot", timeout=settings.backup_lock_timeout
        )
    finally:
        database.dispose()

    database_file = f"database/{snapshot.path.name}"
    config_file = _config_file()
    settings_entry = None if config_file is None else config_entry(settings.data_dir, config_file)
    entries = [(database_file, snapshot.path), *_data_entries(settings, config_file)]
    records, archive = write_archive(
        entries,
        staged / ARCHIVE_FILE,
        keys.recipients,
        level=settings.backup_compression_level,
        progress=progress,
    )
    manifest = Manifest(
        backup_id=backup_id,
        instance_id=instance_id,
        created_at=created_at,
        schema_revision=snapshot.revision,
        database_kind=snapshot.kind,
        database_file=database_file,
        files=records,
        archive=archive,
        row_counts=snapshot.row_counts,
        settings_file=None if config_file is None else str(config_file),
        settings_entry=settings_entry,
        blobs=blobs,
    )
    if keys.passphrase_key_file is not None:
        _write_durably(staged / KEY_FILE, keys.passphrase_key_file.read_bytes())
    _write_durably(staged / MANIFEST_FILE, encrypt_manifest(manifest, keys.recipients))
    return manifest


def _data_entries(settings: Settings, config_file: Path | None) -> list[tuple[str, Path]]:
    data_dir = settings.data_dir
    entries = []
    instance_file = data_dir / "instance.json"
    if instance_file.is_file():
        entries.append(("data/instance.json", instance_file))
    for folder in DATA_FOLDERS:
        root = data_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                entries.append((f"data/{path.relative_to(data_dir).as_posix()}", path))
    names = {name for name, _ in entries}
    if config_file is not None and config_entry(data_dir, config_file) not in names:
        entries.append((config_entry(data_dir, config_file), config_file))
    return entries


def config_entry(data_dir: Path, config_file: Path) -> str:
    """Return the settings file's name in the archive.

    A settings file inside the data dir is archived under its path there, so
    that a restore puts it back under its own name; any other goes to
    `config/llmcloud.toml`.
    """
    resolved, root = config_file.resolve(), data_dir.resolve()
    if resolved.is_relative_to(root):
        return f"{DATA_PREFIX}{resolved.relative_to(root).as_posix()}"
    return CONFIG_ENTRY


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    path = Path(explicit) if explicit else default_config_file()
    return path.absolute() if path.is_file() else None


def _publish(
    backup_id: str, staged: Path, targets: list[Target], failures: dict[str, str]
) -> list[str]:
    """Publish to every target whose model blobs were stored; `failures` names the others."""
    published = []
    for target in targets:
        if target.name in failures:
            continue
        try:
            target.publish(backup_id, staged)
            published.append(target.name)
        except (ServiceError, OSError) as exc:
            detail = exc.message if isinstance(exc, ServiceError) else str(exc)
            log.error("backup %s could not be stored in %s: %s", backup_id, target.name, detail)
            failures[target.name] = detail
    if failures:
        stored = ", ".join(published) or "no target"
        details = "; ".join(f"{name}: {detail}" for name, detail in failures.items())
        raise BackupError(
            f"backup {backup_id} failed on {len(failures)} target(s): {details}; "
            f"stored in {stored}. Older backups are unchanged; fix the target and run again"
        )
    return published


def _record_failure(data_dir: Path, message: str) -> None:
    log.error("backup failed: %s", message)
    update_status(
        data_dir,
        last_failure_at=datetime.now(UTC).isoformat(),
        last_error=message,
        failures_total=read_status(data_dir).failures_total + 1,
    )


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _device_of(path: Path) -> int:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return os.stat(candidate).st_dev
    return -1
