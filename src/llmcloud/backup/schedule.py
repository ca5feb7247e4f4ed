"""Scheduled backups and restore tests inside `llmcloud web` and `up`, or under systemd.

`start_backup_scheduler` starts an APScheduler AsyncIOScheduler with two cron
jobs (settings backup_schedule and backup_verify_schedule, in UTC). Each job
runs in a worker thread; the backup lock in the data dir keeps a scheduled
run from overlapping any other run, even one started by hand.

Several web instances on one PostgreSQL database or Redis server each
schedule the same jobs, so a scheduled run first takes the deployment lock
(see deployment_lock) and is skipped where another instance holds it. An
instance whose clock is a little late finds the lock free again after the
first run finished, so a scheduled backup is also skipped when a target
already stores a backup taken since the scheduled minute.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

from llmcloud.backup.deployment_lock import deployment_lock, lock_kind
from llmcloud.backup.errors import BackupBusy
from llmcloud.backup.operations import backup_and_prune, verify
from llmcloud.backup.retention import backup_time
from llmcloud.backup.targets import targets_from_settings
from llmcloud.cpu import move_thread_to_idle_class
from llmcloud.db.errors import ServiceError
from llmcloud.settings import ConfigError, Settings

log = logging.getLogger("llmcloud.backup")


def parse_cron(expression: str, setting: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        raise ConfigError(
            f"invalid {setting} {expression!r}: {exc}; expected a cron expression of five "
            "fields (minute hour day month weekday), such as '0 * * * *'"
        ) from None


def check_schedules(settings: Settings) -> None:
    """Raise ConfigError naming backup_schedule or backup_verify_schedule when one is invalid."""
    for setting in ("backup_schedule", "backup_verify_schedule"):
        expression: str = getattr(settings, setting)
        if expression.strip():
            parse_cron(expression, setting)


def start_backup_scheduler(settings: Settings) -> AsyncIOScheduler | None:
    """Start the backup and verify jobs on the running event loop; None when both are off.

    Call it from inside the event loop, and `shutdown()` the result on exit.
    """
    scheduler = AsyncIOScheduler(timezone=UTC)
    if settings.backup_schedule.strip():
        trigger = parse_cron(settings.backup_schedule, "backup_schedule")
        scheduler.add_job(
            _scheduled_backup, trigger, args=[settings], id="backup", max_instances=1, coalesce=True
        )
    if settings.backup_verify_schedule.strip():
        trigger = parse_cron(settings.backup_verify_schedule, "backup_verify_schedule")
        scheduler.add_job(
            _scheduled_verify,
            trigger,
            args=[settings],
            id="backup-verify",
            max_instances=1,
            coalesce=True,
        )
    if not scheduler.get_jobs():
        return None
    scheduler.start()
    log.info(
        "backup scheduler started: backups %r, verify %r",
        settings.backup_schedule,
        settings.backup_verify_schedule,
    )
    return scheduler


def write_systemd_units(settings: Settings, folder: Path) -> list[Path]:
    """Write a service and timer for backups and for verify into `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    command = f"{sys.executable} -m llmcloud backup"
    units = {
        "llmcloud-backup.service": _service("Take an llmcloud backup", f"{command} run", settings),
        "llmcloud-backup.timer": _timer("Hourly llmcloud backup", "hourly"),
        "llmcloud-backup-verify.service": _service(
            "Verify the newest llmcloud backup by a restore", f"{command} verify", settings
        ),
        "llmcloud-backup-verify.timer": _timer("Daily llmcloud restore test", "*-*-* 03:30:00"),
    }
    paths = []
    for name, text in units.items():
        path = folder / name
        path.write_text(text)
        paths.append(path)
    return paths


def _scheduled_backup(settings: Settings, scheduled_at: datetime | None = None) -> None:
    """Take the scheduled backup unless another instance holds or already did this run.

    `scheduled_at` is the run's scheduled minute (default: the current one).
    """
    minute = scheduled_at or datetime.now(UTC).replace(second=0, microsecond=0)
    _share_cores_with_engine(settings)
    try:
        with deployment_lock(settings, "backup") as held:
            if not held:
                log.info("scheduled backup skipped: another instance is taking it")
                return
            if lock_kind(settings) != "none" and _backup_taken_since(settings, minute):
                log.info(
                    "scheduled backup skipped: another instance took one at or after %s",
                    minute.isoformat(),
                )
                return
            backup_and_prune(settings)
    except BackupBusy as exc:
        log.info("scheduled backup skipped: %s", exc.message)
    except ServiceError as exc:
        log.error("scheduled backup failed: %s", exc.message)


def _scheduled_verify(settings: Settings) -> None:
    _share_cores_with_engine(settings)
    try:
        with deployment_lock(settings, "verify") as held:
            if not held:
                log.info("scheduled restore test skipped: another instance is running it")
                return
            verify(settings)
    except BackupBusy as exc:
        log.info("scheduled restore test skipped: %s", exc.message)
    except ServiceError as exc:
        log.error("scheduled restore test failed: %s", exc.message)


def _share_cores_with_engine(settings: Settings) -> None:
    """Run this job in the idle class when the engine does (engine_background).

    The engine then gives its cores up to any normal thread, so a backup in the
    normal class would stall decoding for as long as it keeps the cores busy.
    For the first backup of a large model that may be minutes (an estimate,
    not measured). In the same class the two share the cores. restic and the
    other processes that the job starts inherit the class.
    """
    if settings.engine_background:
        move_thread_to_idle_class()


def _backup_taken_since(settings: Settings, moment: datetime) -> bool:
    for target in targets_from_settings(settings):
        ids = target.list_ids()
        if ids and backup_time(ids[-1]) >= moment:
            return True
    return False


def _service(description: str, command: str, settings: Settings) -> str:
    return (
        f"[Unit]\nDescription={description}\n\n"
        f"[Service]\nType=oneshot\nEnvironment=LLMCLOUD_DATA_DIR={settings.data_dir}\n"
        f"ExecStart={command}\n"
    )


def _timer(description: str, calendar: str) -> str:
    return (
        f"[Unit]\nDescription={description}\n\n"
        f"[Timer]\nOnCalendar={calendar}\nPersistent=true\nRandomizedDelaySec=120\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )
