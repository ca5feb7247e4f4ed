"""S3 against moto's S3 server on loopback, restic against a local repository, and `age`."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from llmcloud.backup import operations
from llmcloud.backup.errors import BackupError
from llmcloud.backup.restore import restore_backup
from llmcloud.backup.targets import ARCHIVE_FILE, targets_from_settings
from llmcloud.db import Database, open_database
from llmcloud.engine.store import ModelStore
from llmcloud.settings import Settings
from tests.backup.conftest import backup_settings, dump_tables
from tests.engine.gguf_builder import write_gguf


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="backups")
    yield endpoint
    server.stop()


def test_s3_target_round_trip(tmp_path: Path, s3_endpoint: str, filled: Database) -> None:
    settings = backup_settings(
        tmp_path,
        backup_targets=["s3://backups/llmcloud"],
        backup_s3_endpoint_url=s3_endpoint,
        backup_s3_region="us-east-1",
    )
    before = dump_tables(filled)
    result = operations.backup_and_prune(settings)
    verified = operations.verify(settings)
    filled.dispose()
    other = tmp_path / "restored"

    identities = operations.identities_for(settings)
    restore_backup(
        settings, targets_from_settings(settings), identities, result.backup_id, data_dir=other
    )

    restored = open_database(f"sqlite:///{other / 'llmcloud.db'}")
    try:
        assert dump_tables(restored) == before
    finally:
        restored.dispose()
    assert verified.backup_id == result.backup_id


def test_s3_target_missing_object_fails_verify(
    tmp_path: Path, s3_endpoint: str, filled: Database
) -> None:
    settings = backup_settings(
        tmp_path, backup_targets=["s3://backups/x"], backup_s3_endpoint_url=s3_endpoint
    )
    result = operations.backup_and_prune(settings)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.delete_object(Bucket="backups", Key=f"x/{result.backup_id}/{ARCHIVE_FILE}")

    with pytest.raises(BackupError, match=f"{ARCHIVE_FILE} is missing"):
        operations.verify(settings)


def test_s3_target_unreachable_fails_run(tmp_path: Path, filled: Database) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = backup_settings(
        tmp_path,
        backup_targets=["s3://backups/x"],
        backup_s3_endpoint_url=f"http://127.0.0.1:{port}",
        backup_s3_region="us-east-1",
    )

    with pytest.raises(BackupError, match="s3://backups/x/"):
        operations.backup_and_prune(settings)


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")
def test_restic_target_round_trip(tmp_path: Path, filled: Database) -> None:
    settings = backup_settings(
        tmp_path,
        backup_targets=[f"restic:{tmp_path / 'restic-repo'}", str(tmp_path / "folder")],
        backup_restic_password="a restic password",
    )
    result = operations.backup_and_prune(settings)

    verified = operations.verify(settings, result.backup_id)
    listed = operations.list_backups(settings)

    assert verified.target == f"restic:{tmp_path / 'restic-repo'}"
    assert len(listed[0].targets) == 2


@pytest.mark.skipif(shutil.which("age") is None, reason="age is not installed")
def test_backup_decrypts_with_age_and_tar(settings: Settings, filled: Database) -> None:
    result = operations.backup_and_prune(settings)
    archive = Path(settings.backup_targets[0], result.backup_id, ARCHIVE_FILE)
    key = settings.data_dir / "secrets" / "backup.age"
    out = settings.data_dir.parent / "plain"
    out.mkdir()

    age = subprocess.run(
        ["age", "-d", "-i", str(key), str(archive)], capture_output=True, check=True
    )
    subprocess.run(["tar", "--zstd", "-x", "-C", str(out)], input=age.stdout, check=True)

    assert (out / "data" / "uploads" / "a" / "file.txt").read_text() == "upload"
    assert (out / "database" / "llmcloud.db").stat().st_size > 0


def _blob_model_store(settings: Settings) -> set[str]:
    store = ModelStore(settings.models_dir)
    source = write_gguf(settings.data_dir.parent / "tiny.gguf")
    store.create("tiny:1", files={"tiny.gguf": store.import_file(source)})
    return store.referenced_digests()


def test_s3_target_stores_and_restores_blobs(
    tmp_path: Path, s3_endpoint: str, filled: Database
) -> None:
    settings = backup_settings(
        tmp_path,
        backup_targets=["s3://backups/x"],
        backup_s3_endpoint_url=s3_endpoint,
        backup_s3_region="us-east-1",
        backup_model_blobs=True,
    )
    digests = _blob_model_store(settings)
    operations.backup_and_prune(settings)
    result = operations.backup_and_prune(settings)
    other = tmp_path / "restored"

    restore_backup(
        settings,
        targets_from_settings(settings),
        operations.identities_for(settings),
        result.backup_id,
        data_dir=other,
    )

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [item["Key"] for item in client.list_objects_v2(Bucket="backups")["Contents"]]
    assert len([key for key in keys if key.startswith("x/blobs/")]) == len(digests)
    assert [entry.name.display for entry in ModelStore(other / "models").list()] == ["tiny:1"]


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")
def test_restic_target_stores_verifies_and_prunes_blobs(tmp_path: Path, filled: Database) -> None:
    repository = f"restic:{tmp_path / 'restic-repo'}"
    settings = backup_settings(
        tmp_path,
        backup_targets=[repository],
        backup_restic_password="a restic password",
        backup_model_blobs=True,
    )
    digests = _blob_model_store(settings)
    operations.backup_and_prune(settings)
    target = targets_from_settings(settings)[0]
    stored = target.list_blobs()

    verified = operations.verify(settings)
    shown = operations.show_backup(settings, target.list_ids()[0])
    ModelStore(settings.models_dir).delete("tiny:1")
    for backup_id in target.list_ids():
        target.delete(backup_id)
    operations.prune(settings)

    assert len(stored) == len(digests)
    assert verified.blobs == len(digests)
    assert len(shown.blobs) == len(digests)
    assert target.list_ids() == []
    assert target.list_blobs() == set()
