"""Verifying a backup by restoring it: the only proof that a backup can be restored.

`verify_backup` fetches the backup from a target, decrypts the manifest,
checks the archive's sha256, unpacks every file into a scratch folder while
hashing it, decrypts and hashes every model blob the manifest names, and
loads the database copy: SQLite gets `PRAGMA integrity_check`,
a PostgreSQL dump is restored into a scratch database that is dropped
afterwards. Row counts must equal the manifest's. No live data is touched.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from pyrage import x25519  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from llmcloud.backup.archive import FileRecord, Progress, read_archive
from llmcloud.backup.blobs import check_blobs, recently_checked, record_checked
from llmcloud.backup.errors import BackupError, BackupNotFound, IntegrityError, WrongKey
from llmcloud.backup.keys import passphrase_of, unlock_passphrase_key
from llmcloud.backup.manifest import Manifest, decrypt_manifest
from llmcloud.backup.run import backup_lock
from llmcloud.backup.status import read_status, update_status
from llmcloud.backup.targets import ARCHIVE_FILE, KEY_FILE, MANIFEST_FILE, Target
from llmcloud.db import open_database
from llmcloud.db.errors import ServiceError
from llmcloud.db.snapshot import (
    count_rows,
    restore_snapshot,
    sqlite_integrity_check,
    sqlite_row_counts,
)
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

SCRATCH_PREFIX = "backup-scratch-"


@dataclass(frozen=True)
class VerifyResult:
    backup_id: str
    target: str
    files: int
    size: int
    row_counts: dict[str, int]
    blobs: int = 0
    blobs_present_only: int = 0
    """Blobs checked within backup_verify_blob_days, so only checked to be on the target now."""


def find_backup(targets: list[Target], backup_id: str | None) -> tuple[Target, str]:
    """Return the first target holding the backup; None picks the newest one there."""
    for target in targets:
        ids = target.list_ids()
        if backup_id is None and ids:
            return target, ids[-1]
        if backup_id in ids:
            return target, backup_id
    if backup_id is None:
        raise BackupNotFound("no backup found on any target; run `llmcloud backup run` first")
    names = ", ".join(target.name for target in targets)
    raise BackupNotFound(
        f"backup {backup_id} not found on {names}; `llmcloud backup list` shows the ids"
    )


def load_manifest(folder: Path, identities: list[x25519.Identity], backup_id: str) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(f"backup {backup_id}: {MANIFEST_FILE} is missing")
    if not identities:
        raise WrongKey(
            f"no key to decrypt backup {backup_id}: it has no {KEY_FILE} for backup_passphrase; "
            "pass the age identity file it was encrypted to with --key"
        )
    return decrypt_manifest(path.read_bytes(), identities, f"{backup_id}/{MANIFEST_FILE}")


def with_backup_key(
    folder: Path, identities: list[x25519.Identity], passphrase: str | None, backup_id: str
) -> list[x25519.Identity]:
    """Add the identity in the backup's key.age, unlocked with `passphrase`, to `identities`."""
    key_file = folder / KEY_FILE
    if passphrase is None or not key_file.is_file():
        return identities
    name = f"{backup_id}/{KEY_FILE}"
    return [*identities, unlock_passphrase_key(key_file.read_bytes(), passphrase, name)]


def unpack_backup(
    target: Target,
    backup_id: str,
    identities: list[x25519.Identity],
    scratch: Path,
    progress: Progress | None = None,
    *,
    passphrase: str | None = None,
    blobs_into: Path | None = None,
    blobs_present_only: frozenset[str] = frozenset(),
) -> tuple[Manifest, Path]:
    """Fetch, decrypt and unpack a backup into `scratch/unpacked`, checking every checksum.

    Every model blob the manifest names is decrypted and checked as well, and
    written into `blobs_into` when given, except those in `blobs_present_only`,
    which are only checked to be on the target. Returns the manifest and the
    unpacked folder. Raises IntegrityError naming the missing or damaged piece.
    """
    folder = target.fetch(backup_id, scratch / "fetched")
    identities = with_backup_key(folder, identities, passphrase, backup_id)
    manifest = load_manifest(folder, identities, backup_id)
    archive = folder / ARCHIVE_FILE
    if not archive.is_file():
        raise IntegrityError(f"backup {backup_id}: {ARCHIVE_FILE} is missing")

    unpacked = scratch / "unpacked"
    try:
        records, archive_record = read_archive(archive, identities, unpacked, progress=progress)
    except IntegrityError as exc:
        raise IntegrityError(f"backup {backup_id}: {exc.message}") from None
    _check_archive(archive_record, manifest.archive, backup_id)
    _compare_files(records, manifest.files, backup_id)
    check_blobs(
        manifest.blobs,
        target,
        identities,
        scratch,
        blobs_into,
        backup_id,
        present_only=blobs_present_only,
    )
    return manifest, unpacked


def verify_backup(
    settings: Settings,
    targets: list[Target],
    identities: list[x25519.Identity],
    backup_id: str | None = None,
    *,
    progress: Progress | None = None,
) -> VerifyResult:
    """Restore a backup into scratch space and check it; records the outcome in the status file."""
    try:
        with backup_lock(settings.data_dir):
            result = _verify_locked(settings, targets, identities, backup_id, progress)
    except ServiceError as exc:
        _record_failure(settings.data_dir, exc.message)
        raise
    except OSError as exc:
        message = f"verify failed: {exc}"
        _record_failure(settings.data_dir, message)
        raise BackupError(message) from None

    update_status(
        settings.data_dir,
        last_verified_at=datetime.now(UTC).isoformat(),
        last_verified_id=result.backup_id,
    )
    log.info("backup %s verified by a restore from %s", result.backup_id, result.target)
    return result


def newest_verified(data_dir: Path) -> str | None:
    return read_status(data_dir).last_verified_id


@contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """Yield a new folder under `parent` for unpacking a backup, and remove it afterwards.

    Call it while holding `parent`'s backup lock: folders that a killed
    process left behind there are removed first.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f"{SCRATCH_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _verify_locked(
    settings: Settings,
    targets: list[Target],
    identities: list[x25519.Identity],
    backup_id: str | None,
    progress: Progress | None,
) -> VerifyResult:
    target, found_id = find_backup(targets, backup_id)
    passphrase = passphrase_of(settings)
    recent = recently_checked(settings.data_dir, target.name, settings.backup_verify_blob_days)
    with scratch_folder(settings.data_dir) as scratch:
        manifest, unpacked = unpack_backup(
            target,
            found_id,
            identities,
            scratch,
            progress,
            passphrase=passphrase,
            blobs_present_only=recent,
        )
        database_file = unpacked / manifest.database_file
        row_counts = _check_database(settings, manifest, database_file)
    names = {blob.object for blob in manifest.blobs}
    if settings.backup_verify_blob_days > 0:
        record_checked(settings.data_dir, target.name, names - recent)
    return VerifyResult(
        found_id,
        target.name,
        len(manifest.files),
        manifest.total_size,
        row_counts,
        len(manifest.blobs),
        len(names & recent),
    )


def _check_archive(found: FileRecord, expected: FileRecord, backup_id: str) -> None:
    if found.size != expected.size or found.sha256 != expected.sha256:
        raise IntegrityError(
            f"backup {backup_id}: {ARCHIVE_FILE} does not match its manifest (size {found.size}, "
            f"expected {expected.size}; sha256 {found.sha256}, expected {expected.sha256})"
        )


def _compare_files(found: list[FileRecord], expected: list[FileRecord], backup_id: str) -> None:
    by_path = {record.path: record for record in found}
    for record in expected:
        actual = by_path.pop(record.path, None)
        if actual is None:
            raise IntegrityError(f"backup {backup_id}: file {record.path} is missing")
        if actual != record:
            raise IntegrityError(
                f"backup {backup_id}: file {record.path} does not match its manifest "
                f"(sha256 {actual.sha256}, expected {record.sha256})"
            )
    if by_path:
        raise IntegrityError(
            f"backup {backup_id}: files not in the manifest: {', '.join(sorted(by_path))}"
        )


def _check_database(settings: Settings, manifest: Manifest, database_file: Path) -> dict[str, int]:
    if manifest.database_kind == "sqlite":
        problem = sqlite_integrity_check(database_file)
        if problem != "ok":
            raise IntegrityError(
                f"backup {manifest.backup_id}: SQLite integrity_check failed: {problem}"
            )
        row_counts = sqlite_row_counts(database_file)
    elif settings.database_url is not None:
        row_counts = _pg_restore_counts(database_file, settings.database_url.get_secret_value())
    else:
        raise BackupError(
            f"backup {manifest.backup_id} contains a PostgreSQL dump, but database_url is unset; "
            "set it to the PostgreSQL server where a scratch database may be created"
        )
    if row_counts != manifest.row_counts:
        raise IntegrityError(
            f"backup {manifest.backup_id}: row counts {row_counts} differ from the manifest's "
            f"{manifest.row_counts}"
        )
    return row_counts


def _pg_restore_counts(dump_file: Path, server_url: str) -> dict[str, int]:
    """Restore the dump into a scratch database on the same server, count its rows, drop it."""
    with _scratch_postgres(server_url) as scratch_url:
        restore_snapshot(dump_file, "pg_dump", scratch_url)
        database = open_database(scratch_url)
        try:
            return count_rows(database)
        finally:
            database.dispose()


@contextmanager
def _scratch_postgres(server_url: str) -> Iterator[str]:
    name = f"llmcloud_verify_{secrets.token_hex(6)}"
    admin = make_url(server_url).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(drop)


def _record_failure(data_dir: Path, message: str) -> None:
    log.error("backup verify failed: %s", message)
    update_status(
        data_dir,
        last_verify_failure_at=datetime.now(UTC).isoformat(),
        last_verify_error=message,
        verify_failures_total=read_status(data_dir).verify_failures_total + 1,
    )
