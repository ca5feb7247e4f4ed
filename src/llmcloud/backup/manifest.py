"""The backup manifest: what a backup contains, encrypted with age beside the archive.

It names the format version, the instance, the schema revision, the creation
time, every file with its sha256 and size, the archive's own sha256 and size,
and the row count of every table. age's authenticated encryption means a
changed byte makes it fail to decrypt, so a manifest that opens is intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyrage  # type: ignore[import-untyped]
from pyrage import x25519

from llmcloud.backup.archive import FileRecord, decrypt_bytes
from llmcloud.backup.errors import BackupError, IntegrityError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    backup_id: str
    instance_id: str
    created_at: str
    schema_revision: str | None
    database_kind: str
    database_file: str
    files: list[FileRecord]
    archive: FileRecord
    row_counts: dict[str, int]
    format: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        document = {
            "format": self.format,
            "backup_id": self.backup_id,
            "instance_id": self.instance_id,
            "created_at": self.created_at,
            "schema_revision": self.schema_revision,
            "database": {"kind": self.database_kind, "file": self.database_file},
            "files": [_record_to_dict(record) for record in self.files],
            "archive": _record_to_dict(self.archive),
            "row_counts": self.row_counts,
        }
        return json.dumps(document, indent=2, sort_keys=True).encode()

    @property
    def total_size(self) -> int:
        return sum(record.size for record in self.files)


def encrypt_manifest(manifest: Manifest, recipients: list[x25519.Recipient]) -> bytes:
    encrypted: bytes = pyrage.encrypt(manifest.to_json(), recipients)
    return encrypted


def decrypt_manifest(data: bytes, identities: list[x25519.Identity], name: str) -> Manifest:
    plain = decrypt_bytes(data, identities, name)
    try:
        return _parse(json.loads(plain))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"invalid manifest {name}: {exc!r}") from None


def _parse(document: dict[str, Any]) -> Manifest:
    if document["format"] != FORMAT_VERSION:
        raise BackupError(
            f"backup format {document['format']} is not supported by this llmcloud, which reads "
            f"format {FORMAT_VERSION}; restore it with a matching llmcloud version"
        )
    return Manifest(
        backup_id=str(document["backup_id"]),
        instance_id=str(document["instance_id"]),
        created_at=str(document["created_at"]),
        schema_revision=document["schema_revision"],
        database_kind=str(document["database"]["kind"]),
        database_file=str(document["database"]["file"]),
        files=[_record_from_dict(item) for item in document["files"]],
        archive=_record_from_dict(document["archive"]),
        row_counts={str(k): int(v) for k, v in document["row_counts"].items()},
    )


def _record_to_dict(record: FileRecord) -> dict[str, Any]:
    return {"path": record.path, "sha256": record.sha256, "size": record.size}


def _record_from_dict(item: dict[str, Any]) -> FileRecord:
    return FileRecord(str(item["path"]), str(item["sha256"]), int(item["size"]))
