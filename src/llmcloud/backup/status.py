"""The backup status file: what monitoring reads about backups.

`<data_dir>/backup-status.json` stores the time of the last successful
backup and of the last successful restore test, the duration and size of
the last backup, and failure counters. A failed run only moves the failure
fields, never the last-success time, so an alert on its age fires.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

STATUS_FILE = "backup-status.json"
_write_lock = threading.Lock()


@dataclass(frozen=True)
class BackupStatus:
    last_success_at: str | None = None
    last_backup_id: str | None = None
    last_duration_seconds: float | None = None
    last_size_bytes: int | None = None
    last_failure_at: str | None = None
    last_error: str | None = None
    failures_total: int = 0
    last_verified_at: str | None = None
    last_verified_id: str | None = None
    last_verify_failure_at: str | None = None
    last_verify_error: str | None = None
    verify_failures_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


def read_status(data_dir: Path) -> BackupStatus:
    """Return the stored status; a missing or unreadable file gives an empty one."""
    try:
        document = json.loads(status_path(data_dir).read_text())
    except (OSError, ValueError):
        return BackupStatus()
    known = {name: document[name] for name in BackupStatus.__dataclass_fields__ if name in document}
    return BackupStatus(**known)


def update_status(data_dir: Path, **changes: Any) -> BackupStatus:
    """Apply `changes` to the stored status and write it back atomically."""
    with _write_lock:
        status = replace(read_status(data_dir), **changes)
        path = status_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{STATUS_FILE}.tmp")
        temporary.write_text(json.dumps(status.to_dict(), indent=2))
        os.replace(temporary, path)
    return status
