"""The instance identity: `instance.json` in the data dir, with a random id.

The id is written once, on first start, and never changes. Backups carry it,
so that an empty data dir for an instance that has backups is noticed
instead of silently starting fresh.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("llmcloud.instance")

INSTANCE_FILE = "instance.json"


class InstanceError(Exception):
    """instance.json exists but cannot be read as an instance description."""


@dataclass(frozen=True)
class Instance:
    id: str
    created_at: str


def instance_path(data_dir: Path) -> Path:
    return data_dir / INSTANCE_FILE


def read_instance(data_dir: Path) -> Instance | None:
    """Return the instance described in the data dir, or None when it has no instance.json."""
    path = instance_path(data_dir)
    try:
        document = json.loads(path.read_text())
        return Instance(id=str(document["id"]), created_at=str(document["created_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstanceError(
            f"invalid instance file {path}: {exc}; expected JSON with 'id' and 'created_at', "
            "or restore it from a backup"
        ) from None


def load_or_create_instance(data_dir: Path) -> Instance:
    """Return the data dir's instance, writing a new one with a random id on first start."""
    existing = read_instance(data_dir)
    if existing is not None:
        return existing

    instance = Instance(id=secrets.token_hex(8), created_at=datetime.now(UTC).isoformat())
    data_dir.mkdir(parents=True, exist_ok=True)
    path = instance_path(data_dir)
    temporary = path.with_name(f".{INSTANCE_FILE}.tmp")
    temporary.write_text(json.dumps({"id": instance.id, "created_at": instance.created_at}))
    os.replace(temporary, path)
    log.info("new instance %s created in %s", instance.id, data_dir)
    return instance
