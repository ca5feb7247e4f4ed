"""Backup targets: a local or mounted folder, S3-compatible object storage, a restic repository.

Every backup is two files, `manifest.json.age` and `data.tar.zst.age`, stored
under the backup's id, plus `key.age` when a passphrase encrypts backups. A
backup counts as published only once its manifest is there: a folder target
renames a fsynced temporary folder into place, an S3 target uploads the
manifest after the data, and restic records a snapshot only when it
completed. An interrupted run therefore never looks valid.

Model blobs, when backed up, are stored once per target as
`blobs/KEYID/sha256-HEX.age` and shared by every backup whose manifest names
them; each is written completely before any manifest references it.
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

from llmcloud.backup.errors import BackupError, BackupNotFound, IntegrityError
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

MANIFEST_FILE = "manifest.json.age"
ARCHIVE_FILE = "data.tar.zst.age"
KEY_FILE = "key.age"
# In publishing order: the manifest comes last, because it makes the backup count.
BACKUP_FILES = (ARCHIVE_FILE, KEY_FILE, MANIFEST_FILE)
BACKUP_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
BLOBS_FOLDER = "blobs"
BLOB_NAME_PATTERN = re.compile(r"^[0-9a-f]{16}/sha256-[0-9a-f]{64}\.age$")
RESTIC_TAG = "llmcloud"
RESTIC_BLOB_TAG = "llmcloud-blob"


class Target(Protocol):
    name: str

    def publish(self, backup_id: str, staged: Path) -> None:
        """Store the files of the staged folder as backup `backup_id`."""

    def list_ids(self) -> list[str]:
        """Return the ids of the published backups, oldest first."""

    def fetch(self, backup_id: str, scratch: Path, *, manifest_only: bool = False) -> Path:
        """Return a folder holding the backup's files, downloading them into `scratch` if needed.

        With `manifest_only`, the archive may be left out.
        """

    def delete(self, backup_id: str) -> None: ...

    def list_blobs(self) -> set[str]:
        """Return the names (`KEYID/sha256-HEX.age`) of the stored model blobs."""

    def put_blob(self, name: str, source: Path) -> None:
        """Store an encrypted blob under `name`, completely or not at all."""

    def fetch_blob(self, name: str, scratch: Path) -> Path:
        """Return the path of a stored blob, downloading it into `scratch` if needed.

        Raises IntegrityError naming the blob when it is missing.
        """

    def delete_blob(self, name: str) -> None: ...


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
            for name in _staged_files(staged):
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

    def fetch(self, backup_id: str, scratch: Path, *, manifest_only: bool = False) -> Path:
        folder = self.root / backup_id
        if not (folder / MANIFEST_FILE).is_file():
            raise BackupNotFound(f"backup {backup_id} not found in {self.name}")
        return folder

    def delete(self, backup_id: str) -> None:
        folder = self.root / backup_id
        # Remove the manifest first, so a half-deleted backup no longer looks valid.
        (folder / MANIFEST_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def list_blobs(self) -> set[str]:
        folder = self.root / BLOBS_FOLDER
        if not folder.is_dir():
            return set()
        names = {path.relative_to(folder).as_posix() for path in folder.glob("*/sha256-*.age")}
        return {name for name in names if BLOB_NAME_PATTERN.match(name)}

    def put_blob(self, name: str, source: Path) -> None:
        target = self.root / BLOBS_FOLDER / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            _copy_durably(source, partial)
            os.rename(partial, target)
        except OSError:
            partial.unlink(missing_ok=True)
            raise
        _fsync_folder(target.parent)

    def fetch_blob(self, name: str, scratch: Path) -> Path:
        path = self.root / BLOBS_FOLDER / name
        if not path.is_file():
            raise IntegrityError(f"model blob {BLOBS_FOLDER}/{name} is missing from {self.name}")
        return path

    def delete_blob(self, name: str) -> None:
        (self.root / BLOBS_FOLDER / name).unlink(missing_ok=True)


class S3Target:
    """A bucket and key prefix on S3 or an S3-compatible store (MinIO, Ceph, moto)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.name = f"s3://{bucket}/{self.prefix}"

    def publish(self, backup_id: str, staged: Path) -> None:
        for name in _staged_files(staged):
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

    def fetch(self, backup_id: str, scratch: Path, *, manifest_only: bool = False) -> Path:
        if backup_id not in self.list_ids():
            raise BackupNotFound(f"backup {backup_id} not found in {self.name}")
        folder = scratch / backup_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in (KEY_FILE, MANIFEST_FILE) if manifest_only else BACKUP_FILES:
            try:
                self.client.download_file(
                    self.bucket, self._key(backup_id, name), str(folder / name)
                )
            except Exception as exc:  # botocore raises several unrelated types
                # key.age exists only for passphrase backups; a missing piece fails the checks.
                log.debug("download of %s from %s failed: %s", name, self.name, exc)
                (folder / name).unlink(missing_ok=True)
        return folder

    def delete(self, backup_id: str) -> None:
        for name in (MANIFEST_FILE, ARCHIVE_FILE, KEY_FILE):
            self._call(
                "delete",
                self.client.delete_object,
                Bucket=self.bucket,
                Key=self._key(backup_id, name),
            )

    def list_blobs(self) -> set[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}{BLOBS_FOLDER}/"
        pages = self._call(
            "list", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=start))
        )
        names = {item["Key"][len(start) :] for page in pages for item in page.get("Contents", [])}
        return {name for name in names if BLOB_NAME_PATTERN.match(name)}

    def put_blob(self, name: str, source: Path) -> None:
        # An S3 object appears only once its upload completed, multipart uploads included.
        self._call(
            "upload", self.client.upload_file, str(source), self.bucket, self._blob_key(name)
        )

    def fetch_blob(self, name: str, scratch: Path) -> Path:
        path = scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._blob_key(name), str(path))
        except Exception as exc:  # botocore raises several unrelated types
            raise IntegrityError(
                f"model blob {BLOBS_FOLDER}/{name} cannot be read from {self.name}: {exc}"
            ) from None
        return path

    def delete_blob(self, name: str) -> None:
        self._call(
            "delete", self.client.delete_object, Bucket=self.bucket, Key=self._blob_key(name)
        )

    def _key(self, backup_id: str, name: str) -> str:
        return f"{self.prefix}{backup_id}/{name}"

    def _blob_key(self, name: str) -> str:
        return f"{self.prefix}{BLOBS_FOLDER}/{name}"

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
        files = _staged_files(staged)
        self._restic(
            ["backup", "--tag", RESTIC_TAG, "--tag", f"id={backup_id}", *files], cwd=staged
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

    def fetch(self, backup_id: str, scratch: Path, *, manifest_only: bool = False) -> Path:
        if backup_id not in self.list_ids():
            raise BackupNotFound(f"backup {backup_id} not found in {self.name}")
        folder = scratch / backup_id
        # A pattern without a slash matches a file name anywhere in the snapshot.
        only = ["--include", MANIFEST_FILE, "--include", KEY_FILE] if manifest_only else []
        restore = ["restore", "latest", "--tag", f"id={backup_id}", "--target", str(folder)]
        self._restic([*restore, *only])
        manifests = list(folder.rglob(MANIFEST_FILE))
        return manifests[0].parent if manifests else folder

    def delete(self, backup_id: str) -> None:
        self._forget(f"id={backup_id}")

    # Each blob is a snapshot of its own, tagged with its name; restic deduplicates the data.

    def list_blobs(self) -> set[str]:
        if not self._repository_exists():
            return set()
        output = self._restic(["snapshots", "--json", "--tag", RESTIC_BLOB_TAG])
        names = set()
        for snapshot in json.loads(output) or []:
            for tag in snapshot.get("tags") or []:
                if tag.startswith("blob=") and BLOB_NAME_PATTERN.match(tag[5:]):
                    names.add(tag[5:])
        return names

    def put_blob(self, name: str, source: Path) -> None:
        self._ensure_repository()
        tags = ["--tag", RESTIC_BLOB_TAG, "--tag", f"blob={name}"]
        self._restic(["backup", *tags, source.name], cwd=source.parent)

    def fetch_blob(self, name: str, scratch: Path) -> Path:
        folder = scratch / name.replace("/", "-")
        try:
            self._restic(["restore", "latest", "--tag", f"blob={name}", "--target", str(folder)])
        except BackupError as exc:
            raise IntegrityError(
                f"model blob {BLOBS_FOLDER}/{name} cannot be read from {self.name}: {exc.message}"
            ) from None
        found = [path for path in folder.rglob("*") if path.is_file()]
        if len(found) != 1:
            raise IntegrityError(f"model blob {BLOBS_FOLDER}/{name} is missing from {self.name}")
        return found[0]

    def delete_blob(self, name: str) -> None:
        self._forget(f"blob={name}")

    def _forget(self, tag: str) -> None:
        # `restic forget --tag X` alone removes nothing ("no policy was specified"), so the
        # snapshots are named by id.
        snapshots = json.loads(self._restic(["snapshots", "--json", "--tag", tag])) or []
        ids = [snapshot["id"] for snapshot in snapshots]
        if ids:
            self._restic(["forget", "--prune", *ids])

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


def _staged_files(staged: Path) -> list[str]:
    return [name for name in BACKUP_FILES if (staged / name).is_file()]


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
