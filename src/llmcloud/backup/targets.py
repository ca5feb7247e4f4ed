"""Backup targets: a local or mounted folder, S3-compatible object storage, a restic repository.

Every backup is two files, `manifest.json.age` and `data.tar.zst.age`, stored
under the backup's id. A backup counts as published only once its manifest
is there: a folder target renames a fsynced temporary folder into place, an
S3 target uploads the manifest after the data, and restic records a snapshot
only when it completed. An interrupted run therefore never looks valid.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

from llmcloud.backup.errors import BackupError, BackupNotFound
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

MANIFEST_FILE = "manifest.json.age"
ARCHIVE_FILE = "data.tar.zst.age"
BACKUP_FILES = (ARCHIVE_FILE, MANIFEST_FILE)
BACKUP_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
RESTIC_TAG = "llmcloud"


class Target(Protocol):
    name: str

    def publish(self, backup_id: str, staged: Path) -> None:
        """Store the files of the staged folder as backup `backup_id`."""

    def list_ids(self) -> list[str]:
        """Return the ids of the published backups, oldest first."""

    def fetch(self, backup_id: str, scratch: Path) -> Path:
        """Return a folder holding the backup's files, downloading them into `scratch` if needed."""

    def delete(self, backup_id: str) -> None: ...


class FolderTarget:
    """A local folder or a mounted share (NFS, SMB)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)

    def publish(self, backup_id: str, staged: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # A run killed while copying leaves a partial folder; no listing counts it.
        for stale in self.root.glob(".*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = self.root / f".{backup_id}.partial"
        partial.mkdir()
        try:
            for name in BACKUP_FILES:
                _copy_durably(staged / name, partial / name)
            _fsync_folder(partial)
            os.rename(partial, self.root / backup_id)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _fsync_folder(self.root)

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        ids = [
            entry.name
            for entry in self.root.iterdir()
            if BACKUP_ID_PATTERN.match(entry.name) and (entry / MANIFEST_FILE).is_file()
        ]
        return sorted(ids)

    def fetch(self, backup_id: str, scratch: Path) -> Path:
        folder = self.root / backup_id
        if not (folder / MANIFEST_FILE).is_file():
            raise BackupNotFound(f"backup {backup_id} not found in {self.name}")
        return folder

    def delete(self, backup_id: str) -> None:
        folder = self.root / backup_id
        # Remove the manifest first, so a half-deleted backup no longer looks valid.
        (folder / MANIFEST_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


class S3Target:
    """A bucket and key prefix on S3 or an S3-compatible store (MinIO, Ceph, moto)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.name = f"s3://{bucket}/{self.prefix}"

    def publish(self, backup_id: str, staged: Path) -> None:
        for name in BACKUP_FILES:
            self._call(
                "upload",
                self.client.upload_file,
                str(staged / name),
                self.bucket,
                self._key(backup_id, name),
            )

    def list_ids(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        ids = []
        pages = self._call(
            "list", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix))
        )
        for page in pages:
            for item in page.get("Contents", []):
                backup_id, _, name = item["Key"][len(self.prefix) :].partition("/")
                if name == MANIFEST_FILE and BACKUP_ID_PATTERN.match(backup_id):
                    ids.append(backup_id)
        return sorted(ids)

    def fetch(self, backup_id: str, scratch: Path) -> Path:
        if backup_id not in self.list_ids():
            raise BackupNotFound(f"backup {backup_id} not found in {self.name}")
        folder = scratch / backup_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in BACKUP_FILES:
            try:
                self.client.download_file(
                    self.bucket, self._key(backup_id, name), str(folder / name)
                )
            except Exception as exc:  # botocore raises several unrelated types
                log.warning("download of %s from %s failed: %s", name, self.name, exc)
        return folder

    def delete(self, backup_id: str) -> None:
        for name in (MANIFEST_FILE, ARCHIVE_FILE):
            self._call(
                "delete",
                self.client.delete_object,
                Bucket=self.bucket,
                Key=self._key(backup_id, name),
            )

    def _key(self, backup_id: str, name: str) -> str:
        return f"{self.prefix}{backup_id}/{name}"

    def _call(self, action: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # botocore raises several unrelated types
            raise BackupError(f"S3 {action} at {self.name} failed: {exc}") from None


class ResticTarget:
    """A restic repository, driven through the `restic` command (Debian package restic)."""

    def __init__(self, repository: str, password: str) -> None:
        self.repository = repository
        self.password = password
        self.name = f"restic:{repository}"

    def publish(self, backup_id: str, staged: Path) -> None:
        self._ensure_repository()
        self._restic(
            ["backup", "--tag", RESTIC_TAG, "--tag", f"id={backup_id}", *BACKUP_FILES], cwd=staged
        )

    def list_ids(self) -> list[str]:
        if not self._repository_exists():
            return []
        output = self._restic(["snapshots", "--json", "--tag", RESTIC_TAG])
        ids = []
        for snapshot in json.loads(output) or []:
            for tag in snapshot.get("tags") or []:
                if tag.startswith("id=") and BACKUP_ID_PATTERN.match(tag[3:]):
                    ids.append(tag[3:])
        return sorted(ids)

    def fetch(self, backup_id: str, scratch: Path) -> Path:
        if backup_id not in self.list_ids():
            raise BackupNotFound(f"backup {backup_id} not found in {self.name}")
        folder = scratch / backup_id
        self._restic(["restore", "latest", "--tag", f"id={backup_id}", "--target", str(folder)])
        manifests = list(folder.rglob(MANIFEST_FILE))
        return manifests[0].parent if manifests else folder

    def delete(self, backup_id: str) -> None:
        self._restic(["forget", "--prune", "--tag", f"id={backup_id}"])

    def _repository_exists(self) -> bool:
        command = ["restic", "cat", "config"]
        result = subprocess.run(command, capture_output=True, env=self._environment())  # noqa: S603
        return result.returncode == 0

    def _ensure_repository(self) -> None:
        if not self._repository_exists():
            self._restic(["init"])

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment.update(RESTIC_REPOSITORY=self.repository, RESTIC_PASSWORD=self.password)
        return environment

    def _restic(self, arguments: list[str], cwd: Path | None = None) -> str:
        command = ["restic", "--quiet", *arguments]
        try:
            result = subprocess.run(  # noqa: S603 - arguments built here, not from input
                command,
                capture_output=True,
                text=True,
                cwd=cwd,
                env=self._environment(),
            )
        except FileNotFoundError:
            raise BackupError(
                "restic not found; install it (Debian: apt-get install restic)"
            ) from None
        if result.returncode != 0:
            raise BackupError(
                f"restic {arguments[0]} on {self.name} failed: {result.stderr.strip()}"
            )
        return result.stdout


def targets_from_settings(settings: Settings) -> list[Target]:
    """Build the configured targets; no target configured means `<data_dir>/backups`."""
    specs = settings.backup_targets or [str(settings.data_dir / "backups")]
    return [target_from_spec(spec, settings) for spec in specs]


def target_from_spec(spec: str, settings: Settings) -> Target:
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://") :].partition("/")
        if not bucket:
            raise BackupError(f"invalid backup target {spec!r}; expected s3://BUCKET/PREFIX")
        return S3Target(bucket, prefix, _s3_client(settings))
    if spec.startswith("restic:"):
        password = settings.backup_restic_password
        if password is None:
            raise BackupError(
                f"backup target {spec!r} needs backup_restic_password, the repository's password"
            )
        return ResticTarget(spec[len("restic:") :], password.get_secret_value())
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        raise BackupError(
            f"invalid backup target {spec!r}; expected an absolute path, s3://BUCKET/PREFIX "
            "or restic:REPOSITORY"
        )
    return FolderTarget(path)


def _s3_client(settings: Settings) -> Any:
    import boto3  # type: ignore[import-untyped]  # imported here: boto3 takes about a second to import

    return boto3.client(
        "s3",
        endpoint_url=settings.backup_s3_endpoint_url,
        region_name=settings.backup_s3_region,
    )


def _copy_durably(source: Path, target: Path) -> None:
    # The staged files never change once written, so a hard link is as good as a copy
    # when the target is on the staging folder's filesystem.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
