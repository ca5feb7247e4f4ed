"""Readiness checks that every process shares."""

from __future__ import annotations

import logging

from llmcloud.monitoring.sources import disk_free_percent
from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.monitoring")


def disk_problem(settings: Settings) -> str | None:
    """Return why the data dir's disk is too full for /readyz, or None when it has room."""
    floor = settings.monitoring_min_free_disk_percent
    try:
        free = disk_free_percent(settings.data_dir)
    except OSError as exc:
        return f"cannot read the free space of {settings.data_dir}: {exc}"
    if free >= floor:
        return None
    logger.warning(
        "data dir %s has %.1f%% free, under the floor of %g%%", settings.data_dir, free, floor
    )
    return (
        f"the file system of {settings.data_dir} has {free:.1f}% free, under the floor of "
        f"{floor:g}% (setting monitoring_min_free_disk_percent); free some space"
    )
