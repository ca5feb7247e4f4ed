"""Retention: the last N backups, and the newest of each day, week and month, are kept.

Backup ids start with their UTC creation time (`20261204T164500Z-3fa9c1`),
so retention needs no manifest. The newest verified backup is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id.split("-", 1)[0], ID_TIME_FORMAT).replace(tzinfo=UTC)


def backups_to_delete(
    backup_ids: Iterable[str], policy: RetentionPolicy, protected: str | None = None
) -> list[str]:
    """Return the ids that the policy does not keep, oldest first."""
    newest_first = sorted(backup_ids, reverse=True)
    keep = set(newest_first[: policy.keep_last])
    keep |= _newest_per_period(newest_first, policy.keep_daily, lambda t: t.strftime("%Y-%m-%d"))
    keep |= _newest_per_period(newest_first, policy.keep_weekly, _iso_week)
    keep |= _newest_per_period(newest_first, policy.keep_monthly, lambda t: t.strftime("%Y-%m"))
    if protected is not None:
        keep.add(protected)
    return sorted(set(newest_first) - keep)


def _iso_week(time: datetime) -> str:
    year, week, _ = time.isocalendar()
    return f"{year}-W{week:02d}"


def _newest_per_period(
    newest_first: list[str], periods: int, period_of: Callable[[datetime], str]
) -> set[str]:
    kept: dict[str, str] = {}
    for backup_id in newest_first:
        period = period_of(backup_time(backup_id))
        if period not in kept:
            if len(kept) == periods:
                break
            kept[period] = backup_id
    return set(kept.values())
