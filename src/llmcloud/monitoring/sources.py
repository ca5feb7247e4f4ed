"""Connections from the sourced metrics to the parts that keep the numbers.

Each `watch_*` function binds metrics of llmcloud.monitoring.metrics to a
live object in an app's AppRegistry. The metrics read the object whenever that
app is scraped, so nothing here runs between scrapes. An app calls the
functions for the parts it runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcloud.monitoring import metrics
from llmcloud.monitoring.gpus import open_gpus
from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.settings import Settings

if TYPE_CHECKING:
    from llmcloud.db.database import Database
    from llmcloud.engine.scheduler import Scheduler
    from llmcloud.gateway import Gateway
    from llmcloud.socks.stats import SocksStats

logger = logging.getLogger("llmcloud.monitoring")

Samples = Mapping[tuple[str, ...], float]


def watch_data_dir(registry: AppRegistry, data_dir: Path) -> None:
    """Report free and total space of the data dir's file system, and GPUs where present."""
    registry.set_source(metrics.data_dir_free, lambda: {(): float(_disk_usage(data_dir).free)})
    registry.set_source(metrics.data_dir_size, lambda: {(): float(_disk_usage(data_dir).total)})
    _watch_gpus(registry)


def watch_scheduler(registry: AppRegistry, scheduler: Scheduler) -> None:
    registry.set_source(metrics.models_loaded, lambda: {(): float(len(scheduler.running()))})


def watch_gateway(registry: AppRegistry, gateway: Gateway) -> None:
    def backends_up() -> Samples:
        return {
            (backend.name,): 1.0 if backend.enabled and backend.healthy else 0.0
            for backend in gateway.status().backends
        }

    registry.set_source(metrics.backend_up, backends_up)


def watch_accounts(registry: AppRegistry, database: Callable[[], Database | None]) -> None:
    """Report accounts by role and active sessions, queried through llmcloud.auth per scrape."""
    from llmcloud.auth.account_stats import count_accounts_by_role, count_active_sessions
    from llmcloud.db.models import Role

    def users() -> Samples:
        db = database()
        counts = count_accounts_by_role(db) if db is not None else {}
        return {(role.value,): float(counts.get(role.value, 0)) for role in Role}

    def sessions() -> Samples:
        db = database()
        return {(): float(count_active_sessions(db))} if db is not None else {}

    registry.set_source(metrics.users, users)
    registry.set_source(metrics.sessions_active, sessions)


def watch_certificates(registry: AppRegistry) -> None:
    """Report the not-after time and renewal failures of every certificate llmcloud.tls serves."""
    from llmcloud.tls.status import STATUS

    def not_after() -> Samples:
        return {
            (entry.served_at,): entry.not_after.timestamp()
            for entry in STATUS.snapshot()
            if entry.not_after is not None
        }

    def renewal_failures() -> Samples:
        return {
            (entry.served_at,): float(entry.renewal_failures_total) for entry in STATUS.snapshot()
        }

    registry.set_source(metrics.certificate_not_after, not_after)
    registry.set_source(metrics.certificate_renewal_failures, renewal_failures)


def disk_free_percent(data_dir: Path) -> float:
    usage = _disk_usage(data_dir)
    return 100.0 * usage.free / usage.total if usage.total else 0.0


def _disk_usage(data_dir: Path) -> Any:
    # The data dir may not exist yet on a fresh install; its parent is on the same file system.
    path = data_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path)


def _watch_gpus(registry: AppRegistry) -> None:
    """Point the GPU gauges at NVML when a GPU and its driver are present, else clear them."""
    reader = open_gpus()
    registry.set_source(metrics.gpu_utilization, reader.utilization if reader else None)
    registry.set_source(metrics.gpu_memory_used, reader.memory_used if reader else None)
    registry.set_source(metrics.gpu_memory_total, reader.memory_total if reader else None)


def watch_socks(registry: AppRegistry, stats: SocksStats) -> None:
    """Report the SOCKS proxy's connection, byte and denial totals."""
    registry.set_source(
        metrics.socks_connections,
        lambda: {(outcome,): float(count) for outcome, count in stats.connections.items()},
    )
    registry.set_source(
        metrics.socks_bytes,
        lambda: {
            ("to_destination",): float(stats.bytes_to_destination),
            ("to_client",): float(stats.bytes_to_client),
        },
    )
    registry.set_source(
        metrics.socks_denied_destinations, lambda: {(): float(stats.denied_destinations)}
    )


def watch_backups(registry: AppRegistry, settings: Settings) -> None:
    """Report backup and restore-test times, size, duration and failures from the status file."""
    try:
        from llmcloud.backup.status import BackupStatus, read_status
    except ImportError:  # a build without the backup package
        logger.debug("no backup metrics: llmcloud.backup is not installed")
        return

    def status() -> BackupStatus:
        return read_status(settings.data_dir)

    def optional(value: float | None) -> Samples:
        return {} if value is None else {(): float(value)}

    registry.set_source(
        metrics.backup_last_success, lambda: optional(_timestamp(status().last_success_at))
    )
    registry.set_source(
        metrics.backup_last_verified_restore,
        lambda: optional(_timestamp(status().last_verified_at)),
    )
    registry.set_source(metrics.backup_duration, lambda: optional(status().last_duration_seconds))
    registry.set_source(metrics.backup_size, lambda: optional(status().last_size_bytes))
    registry.set_source(
        metrics.backup_failures,
        lambda: {(): float(status().failures_total + status().verify_failures_total)},
    )
    interval = schedule_interval(settings.backup_schedule)
    registry.set_source(metrics.backup_interval, lambda: optional(interval))


def schedule_interval(cron: str) -> float | None:
    """Return the seconds between the next two runs of a cron schedule, or None when it is off."""
    if not cron.strip():
        return None
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    trigger = CronTrigger.from_crontab(cron, timezone=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + dt.timedelta(seconds=1)) if first else None
    if first is None or second is None:
        return None
    seconds: float = (second - first).total_seconds()
    return seconds


def _timestamp(iso_time: str | None) -> float | None:
    if not iso_time:
        return None
    return dt.datetime.fromisoformat(iso_time).timestamp()
