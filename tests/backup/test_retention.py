from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llmcloud.backup.retention import RetentionPolicy, backup_time, backups_to_delete
from llmcloud.backup.run import new_backup_id
from llmcloud.backup.targets import BACKUP_ID_PATTERN

START = datetime(2026, 1, 1, tzinfo=UTC)


def hourly_ids(hours: int) -> list[str]:
    return [
        (START + timedelta(hours=h)).strftime("%Y%m%dT%H%M%SZ") + "-aaaaaa" for h in range(hours)
    ]


def test_retention_keeps_last_and_one_per_day() -> None:
    ids = hourly_ids(24 * 3)
    policy = RetentionPolicy(keep_last=2, keep_daily=3, keep_weekly=0, keep_monthly=0)

    kept = sorted(set(ids) - set(backups_to_delete(ids, policy)))

    assert kept == [ids[23], ids[47], ids[70], ids[71]]


def test_retention_never_deletes_protected_backup() -> None:
    ids = hourly_ids(10)
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)

    deleted = backups_to_delete(ids, policy, protected=ids[0])

    assert ids[0] not in deleted
    assert len(deleted) == 8


def test_retention_keeps_one_per_month() -> None:
    ids = [(START + timedelta(days=d)).strftime("%Y%m%dT%H%M%SZ") + "-aaaaaa" for d in range(90)]
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=3)

    kept = set(ids) - set(backups_to_delete(ids, policy))

    assert {backup_id[:6] for backup_id in kept} == {"202601", "202602", "202603"}


def test_ids_within_one_second_sort_by_time() -> None:
    moments = [START + timedelta(milliseconds=ms) for ms in (999, 5, 250, 0, 998)]
    ids = [new_backup_id(moment) for moment in moments]

    assert sorted(ids) == [new_id for _, new_id in sorted(zip(moments, ids, strict=True))]
    assert all(BACKUP_ID_PATTERN.match(new_id) for new_id in ids)
    assert backup_time(ids[0]) == START


def test_retention_keeps_newest_of_one_second() -> None:
    ids = [new_backup_id(START + timedelta(milliseconds=ms)) for ms in (700, 20, 300)]
    policy = RetentionPolicy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)

    kept = set(ids) - set(backups_to_delete(ids, policy))

    assert kept == {ids[0]}
