"""Database migrations at start-up, with a backup first.

When a newer llmcloud starts on a database at an older schema revision,
`migrate_with_backup()` first takes a backup through a hook, and only then
runs the migrations. A failed backup stops the start-up before anything is
changed. `Database.upgrade()` runs every pending migration in one
transaction, so a failed migration is rolled back and the database stays at
its old revision. PostgreSQL and SQLite both roll back DDL inside a
transaction. A migration that fails because the database is read-only gets
the advice to make it writable instead of the advice to go back a version.

Several web instances that start at once on one PostgreSQL database would
each back up and migrate it. So the backup and the migration run under the
deployment-wide backup lock (llmcloud.backup.deployment_lock), and an
instance that waited for the lock reads the revision again: the first
instance has migrated the database by then, so one backup is taken, not two.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from llmcloud.db import Database
from llmcloud.db.errors import DatabaseReadOnly, ServiceError
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.deploy")

BackupHook = Callable[[Settings, Database], object]


class UpgradeError(Exception):
    """The backup before a migration, or the migration itself, failed."""


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None
    backed_up: bool


def migrate_with_backup(
    settings: Settings, database: Database, backup: BackupHook | None = None
) -> MigrationResult:
    """Migrate the database to the newest revision, backing it up first when it has data.

    A new, empty database is migrated without a backup. `backup` defaults to
    `default_backup_hook()`. Raises UpgradeError when the backup or the
    migration fails; in both cases the schema is left as it was. Raises
    DatabaseReadOnly when a read-only database cannot even be opened.
    """
    before = database.current_revision()
    head = database.head_revision()
    if before == head:
        return MigrationResult(before=before, after=before, backed_up=False)
    if before is None:
        # Nothing to back up, and Database.upgrade() serialises concurrent migrations itself, so
        # a first start needs neither the lock nor the Redis server that may hold it.
        return _upgrade(database, before, head, backed_up=False)

    # Imported here, so that a start-up with no migration due does not load the backup package.
    from llmcloud.backup.deployment_lock import wait_for_deployment_lock

    try:
        with wait_for_deployment_lock(settings, "backup", "the backup and migration at start-up"):
            return _migrate_locked(settings, database, backup)
    except DatabaseReadOnly:
        raise
    except ServiceError as exc:
        log.error("cannot migrate %s: %s", database.safe_url, exc.message)
        raise UpgradeError(f"{exc.message}. Nothing was migrated") from None


def _migrate_locked(
    settings: Settings, database: Database, backup: BackupHook | None
) -> MigrationResult:
    # Another instance may have migrated the database while this one waited for the lock.
    before = database.current_revision()
    head = database.head_revision()
    if before == head:
        return MigrationResult(before=before, after=before, backed_up=False)

    backed_up = False
    if before is not None:
        _run_backup(backup or default_backup_hook(), settings, database, before, head)
        backed_up = True
    return _upgrade(database, before, head, backed_up=backed_up)


def _upgrade(
    database: Database, before: str | None, head: str | None, *, backed_up: bool
) -> MigrationResult:
    try:
        database.upgrade()
    except DatabaseReadOnly as exc:
        raise UpgradeError(
            f"the migration of {database.safe_url} from revision {before} to {head} failed "
            f"because the database is read-only ({exc.driver_message}), so it is still at "
            f"revision {before}. To migrate it, {exc.advice}"
        ) from None
    except SQLAlchemyError as exc:
        first_line = str(exc).strip().splitlines()[0]
        log.error("migration of %s from %s to %s failed: %s", database.safe_url, before, head, exc)
        raise UpgradeError(
            f"the migration of {database.safe_url} from revision {before} to {head} failed and "
            f"was rolled back, so the database is still at revision {before}: {first_line}. "
            "Run the previous llmcloud version again, or restore the backup taken before it"
        ) from None
    return MigrationResult(before=before, after=database.current_revision(), backed_up=backed_up)


def default_backup_hook() -> BackupHook:
    """Return the backup package's pre-migration backup, `backup_before_migration()`."""
    # Imported on use, so that a start-up with no migration due does not load the backup package.
    module = importlib.import_module("llmcloud.backup.operations")
    hook: BackupHook = module.backup_before_migration
    return hook


def _run_backup(
    hook: BackupHook, settings: Settings, database: Database, before: str, head: str | None
) -> None:
    log.info(
        "database %s is at revision %s; backing it up before migrating to %s",
        database.safe_url,
        before,
        head,
    )
    try:
        hook(settings, database)
    except (ServiceError, OSError, SQLAlchemyError) as exc:
        log.error("backup before migrating %s failed: %s", database.safe_url, exc)
        raise UpgradeError(
            f"the backup before migrating {database.safe_url} from revision {before} to {head} "
            f"failed, so nothing was migrated: {exc}. Fix the backup settings (backup_*), or "
            "run the previous llmcloud version until a backup succeeds"
        ) from None
