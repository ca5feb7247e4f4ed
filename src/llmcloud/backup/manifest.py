"""The backup manifest: what a backup contains, encrypted with age beside the archive.

It names the format version, the instance, the schema revision, the creation
time, every file with its sha256 and size, the archive's own sha256 and size,
the row count of every table, where the settings file was, and the model
blobs stored beside the backup. age's authenticated encryption means a
changed byte makes it fail to decrypt, so a manifest that opens is intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyrage  # type: ignore[import-untyped]
from pyrage import x25519

from llmcloud.backup.archive import FileRecord, decrypt_bytes
from llmcloud.backup.blobs import BlobRecord
from llmcloud.backup.errors import BackupError, IntegrityError
from llmcloud.backup.targets import BLOB_NAME_PATTERN

# Format 2 adds model blobs; a backup without them is written as format 1, which
# llmcloud versions that predate blobs can still read.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


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
    # The settings file's path when the backup was taken, and its name in the archive.
    settings_file: str | None = None
    settings_entry: str | None = None
    blobs: list[BlobRecord] = field(default_factory=list)

    @property
    def format(self) -> int:
        return FORMAT_VERSION if self.blobs else 1

    def to_json(self) -> bytes:
        document: dict[str, Any] = {
            "format": self.format,
            "backup_id": self.backup_id,
            "instance_id": self.instance_id,
            "created_at": self.created_at,
            "schema_revision": self.schema_revision,
            "database": {"kind": self.database_kind, "file": self.database_file},
            "files": [_record_to_dict(record) for record in self.files],
            "archive": _record_to_dict(self.archive),
            "row_counts": self.row_counts,
            "settings_file": self.settings_file,
            "settings_entry": self.settings_entry,
        }
        if self.blobs:
            document["blobs"] = [
                {"digest": blob.digest, "size": blob.size, "object": blob.object}
                for blob in self.blobs
            ]
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
    if document["format"] not in READABLE_FORMATS:
        raise BackupError(
            f"backup format {document['format']} is not supported by this llmcloud, which reads "
            f"formats {', '.join(map(str, READABLE_FORMATS))}; restore it with a matching "
            "llmcloud version"
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
        settings_file=document.get("settings_file"),
        settings_entry=document.get("settings_entry"),
        blobs=[_blob_from_dict(item) for item in document.get("blobs", [])],
    )


def _blob_from_dict(item: dict[str, Any]) -> BlobRecord:
    # Anyone with the public key can write a manifest that decrypts, so names become paths
    # only after this check.
    record = BlobRecord(str(item["digest"]), int(item["size"]), str(item["object"]))
    if not BLOB_NAME_PATTERN.match(record.object) or record.digest.replace(":", "-") not in (
        record.object
    ):
        raise ValueError(f"invalid model blob {record.object!r} for {record.digest!r}")
    return record


def _record_to_dict(record: FileRecord) -> dict[str, Any]:
    return {"path": record.path, "sha256": record.sha256, "size": record.size}


def _record_from_dict(item: dict[str, Any]) -> FileRecord:
    return FileRecord(str(item["path"]), str(item["sha256"]), int(item["size"]))
