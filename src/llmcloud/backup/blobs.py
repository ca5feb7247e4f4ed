"""Model blobs in backups: each blob stored once per target, encrypted, shared by backups.

With backup_model_blobs on, a backup's manifest lists every blob that the
model store's manifests reference, with its sha256 and size, and each blob
not yet at a target is stored there as `blobs/KEYID/sha256-HEX.age`,
encrypted with age. KEYID is derived from the recipients, so after a key
change blobs are stored again under the new key instead of being reused
from a key that can no longer decrypt them. Blobs are uploaded before the
manifest that references them, and pruning removes a blob only when no
remaining backup's manifest names it.

A blob never changes once stored, so verify does not download and decrypt
it every time. `<data_dir>/backup-blobs-checked.json` records when verify
last checked each blob on each target. For backup_verify_blob_days after
that check, verify only makes sure that the blob is still there. A restore
always checks every blob it writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage  # type: ignore[import-untyped]
from pyrage import x25519

from llmcloud.backup.archive import HashingReader, HashingWriter, Progress, decrypt_stream
from llmcloud.backup.errors import BackupError, IntegrityError
from llmcloud.backup.targets import BLOBS_FOLDER, Target
from llmcloud.db.errors import ServiceError
from llmcloud.engine.store import ModelStore
from llmcloud.settings import Settings

log = logging.getLogger("llmcloud.backup")

CHECKED_FILE = "backup-blobs-checked.json"


@dataclass(frozen=True)
class BlobRecord:
    """A model blob in a backup: its digest (`sha256:HEX`), size, and object name at a target."""

    digest: str
    size: int
    object: str


@dataclass(frozen=True)
class LocalBlob:
    digest: str
    path: Path


def key_id(recipients: list[x25519.Recipient]) -> str:
    """Return 16 hex digits that name the set of recipients the blobs are encrypted to."""
    text = "\n".join(sorted(str(recipient) for recipient in recipients))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def object_name(key: str, digest: str) -> str:
    return f"{key}/{digest.replace(':', '-', 1)}.age"


def local_blobs(settings: Settings) -> list[LocalBlob]:
    """Return the blobs that the model store's manifests reference, by digest.

    A referenced blob that is missing from the store is logged and left out,
    because the model is already broken and the backup can still be taken.
    """
    if not (settings.models_dir / "manifests").is_dir():
        return []
    store = ModelStore(settings.models_dir)
    blobs = []
    for digest in sorted(store.referenced_digests()):
        path = store.blob_path(digest)
        if path.is_file():
            blobs.append(LocalBlob(digest, path))
        else:
            log.warning("model blob %s is referenced but missing from %s", digest, path.parent)
    return blobs


def store_blobs(
    blobs: list[LocalBlob],
    targets: list[Target],
    recipients: list[x25519.Recipient],
    staging: Path,
    failures: dict[str, str],
    progress: Progress | None = None,
) -> list[BlobRecord]:
    """Encrypt and store each blob on every target that lacks it; return their records.

    A target that fails is named in `failures` and skipped for the rest of
    the run. A local blob whose content does not match its digest raises
    IntegrityError, because storing it would back up damaged data.
    """
    key = key_id(recipients)
    stored: dict[str, set[str]] = {}
    for target in targets:
        try:
            stored[target.name] = target.list_blobs()
        except (ServiceError, OSError) as exc:
            _fail(target, failures, exc)

    records = []
    for blob in blobs:
        name = object_name(key, blob.digest)
        lacking = [
            target
            for target in targets
            if target.name not in failures and name not in stored[target.name]
        ]
        if lacking:
            encrypted = staging / name.rsplit("/", 1)[1]
            _encrypt_blob(blob, encrypted, recipients, progress)
            for target in lacking:
                try:
                    target.put_blob(name, encrypted)
                except (ServiceError, OSError) as exc:
                    _fail(target, failures, exc)
            encrypted.unlink()
        records.append(BlobRecord(blob.digest, blob.path.stat().st_size, name))
    return records


def check_blobs(
    records: list[BlobRecord],
    target: Target,
    identities: list[x25519.Identity],
    scratch: Path,
    destination: Path | None,
    backup_id: str,
    *,
    present_only: frozenset[str] = frozenset(),
) -> None:
    """Fetch and decrypt every blob, checking its sha256 and size against the manifest.

    Blobs whose object names are in `present_only` are only checked to be on the
    target. With `destination`, each checked blob is also written there as
    `sha256-HEX`. Raises IntegrityError naming the first blob that is missing or damaged.
    """
    downloads = scratch / "blobs"
    if destination is not None:
        destination.mkdir(parents=True, exist_ok=True)
    stored = target.list_blobs() if present_only else set()
    for record in records:
        where = f"backup {backup_id}: model blob {record.digest} ({BLOBS_FOLDER}/{record.object})"
        if record.object in present_only:
            if record.object not in stored:
                raise IntegrityError(f"{where} is missing from {target.name}")
            continue
        try:
            source = target.fetch_blob(record.object, downloads)
        except IntegrityError as exc:
            raise IntegrityError(f"backup {backup_id}: {exc.message}") from None

        final = None if destination is None else destination / record.digest.replace(":", "-", 1)
        partial = None if final is None else final.with_name(f".{final.name}.partial")
        try:
            digest, size = _decrypt_blob(source, partial, identities, where)
        finally:
            if source.is_relative_to(downloads):
                source.unlink(missing_ok=True)
        if digest != record.digest or size != record.size:
            raise IntegrityError(
                f"{where} does not match the manifest (sha256 {digest}, size {size}; "
                f"expected {record.digest}, size {record.size})"
            )
        if partial is not None and final is not None:
            os.replace(partial, final)


def remove_unused_blobs(target: Target, referenced: set[str]) -> list[str]:
    """Delete the blobs on `target` that no name in `referenced` keeps; return their names."""
    removed = sorted(target.list_blobs() - referenced)
    for name in removed:
        target.delete_blob(name)
        log.info("model blob %s pruned from %s", name, target.name)
    return removed


def _encrypt_blob(
    blob: LocalBlob, output: Path, recipients: list[x25519.Recipient], progress: Progress | None
) -> None:
    with open(blob.path, "rb") as source, open(output, "wb") as sink:
        reader = HashingReader(source, progress)
        pyrage.encrypt_io(reader, sink, recipients)
        sink.flush()
        os.fsync(sink.fileno())
    actual = f"sha256:{reader.digest.hexdigest()}"
    if actual != blob.digest:
        output.unlink(missing_ok=True)
        raise IntegrityError(
            f"model blob {blob.path} is damaged: its content hashes to {actual}; remove the "
            "model with `llmcloud rm` and pull it again, then run the backup again"
        )


def _decrypt_blob(
    source: Path, output: Path | None, identities: list[x25519.Identity], where: str
) -> tuple[str, int]:
    """Decrypt `source` into `output` (or nowhere), returning the plaintext's sha256 and size."""
    with open(source, "rb") as handle, open(output or os.devnull, "wb") as sink:
        hashing = HashingWriter(sink)
        try:
            decrypt_stream(handle, hashing, identities, where)
        except BackupError as exc:
            raise IntegrityError(exc.message) from None
    return f"sha256:{hashing.digest.hexdigest()}", hashing.size


def _fail(target: Target, failures: dict[str, str], exc: Exception) -> None:
    detail = exc.message if isinstance(exc, ServiceError) else str(exc)
    log.error("model blobs could not be stored in %s: %s", target.name, detail)
    failures[target.name] = detail


def recently_checked(data_dir: Path, target: str, days: int) -> frozenset[str]:
    """Return the blobs that verify checked on `target` within the last `days` days."""
    if days <= 0:
        return frozenset()
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    checked = _read_checked(data_dir).get(target, {})
    # A check time in the future, written while the clock was wrong, counts as no check, so
    # that it cannot spare a blob the full check for longer than `days`.
    return frozenset(name for name, when in checked.items() if since < _parse_time(when) <= now)


def record_checked(data_dir: Path, target: str, names: set[str]) -> None:
    """Record that verify checked the blobs `names` on `target` now."""
    if not names:
        return
    document = _read_checked(data_dir)
    now = datetime.now(UTC).isoformat()
    document.setdefault(target, {}).update(dict.fromkeys(names, now))
    path = data_dir / CHECKED_FILE
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=1, sort_keys=True))
    os.replace(partial, path)


def _read_checked(data_dir: Path) -> dict[str, dict[str, str]]:
    """Read the check times, or nothing when the file is missing or unreadable."""
    try:
        document = json.loads((data_dir / CHECKED_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable, so verify checks every blob again: %s", CHECKED_FILE, exc)
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        target: {str(name): str(when) for name, when in times.items()}
        for target, times in document.items()
        if isinstance(times, dict)
    }


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
