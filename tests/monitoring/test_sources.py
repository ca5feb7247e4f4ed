"""Sourced metrics read the parts that keep the numbers, when the app that binds them is scraped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from llmcloud.monitoring import sources
from llmcloud.monitoring.conditions import evaluate
from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.monitoring.samples import Sampler
from llmcloud.settings import Settings
from llmcloud.tls.status import STATUS


def test_certificate_expiry_exposed_and_sampled(tmp_path: Path) -> None:
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    STATUS.record_served("web:8443", tmp_path / "cert.pem", 1, not_after)
    STATUS.record_renewal("web:8443", tmp_path / "cert.pem", "ACME order failed")
    registry = AppRegistry()
    sources.watch_certificates(registry)
    try:
        text = generate_latest(registry).decode()
        sample = Sampler(15, 3600, registry).take()
    finally:
        STATUS.clear()

    assert 'llmcloud_certificate_not_after_timestamp_seconds{served_at="web:8443"}' in text
    assert 'llmcloud_certificate_renewal_failures_total{served_at="web:8443"} 1.0' in text
    assert 9.9 < sample.certificate_days_left["web:8443"] <= 10


def test_data_dir_free_space_exposed(tmp_path: Path) -> None:
    registry = AppRegistry()
    sources.watch_data_dir(registry, tmp_path / "not-created-yet")

    sample = Sampler(15, 3600, registry).take()

    assert sample.disk_free_percent is not None
    assert 0 <= sample.disk_free_percent <= 100


def test_gpu_watch_tolerates_missing_nvml() -> None:
    registry = AppRegistry()
    sources.watch_data_dir(registry, Path("."))  # must not raise where no GPU or NVML exists
    text = generate_latest(registry).decode()

    assert "# TYPE llmcloud_gpu_utilization_ratio gauge" in text


def test_backup_status_exposed_and_alerted(tmp_path: Path) -> None:
    status = pytest.importorskip("llmcloud.backup.status")
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)).isoformat()
    status.update_status(tmp_path, last_success_at=old, last_size_bytes=1234, failures_total=2)
    registry = AppRegistry()
    sources.watch_backups(registry, Settings(data_dir=tmp_path, backup_schedule="0 * * * *"))

    text = generate_latest(registry).decode()
    sample = Sampler(15, 3600, registry).take()

    assert "llmcloud_backup_size_bytes 1234.0" in text
    assert "llmcloud_backup_failures_total 2.0" in text
    assert "llmcloud_backup_interval_seconds 3600.0" in text
    assert "BackupTooOld" in {name for name, _ in evaluate(sample)}


def test_schedule_interval_of_cron() -> None:
    assert sources.schedule_interval("0 * * * *") == 3600
    assert sources.schedule_interval("30 3 * * *") == 86400
    assert sources.schedule_interval("") is None


def test_failed_backup_fires_alert(tmp_path: Path) -> None:
    status = pytest.importorskip("llmcloud.backup.status")
    registry = AppRegistry()
    sources.watch_backups(registry, Settings(data_dir=tmp_path, backup_schedule="0 * * * *"))
    sampler = Sampler(15, 3600, registry)
    before = sampler.take()

    status.update_status(tmp_path, last_error="target unreachable", failures_total=1)
    after = sampler.take()

    assert "BackupFailing" not in {name for name, _ in evaluate(before)}
    assert "BackupFailing" in {name for name, _ in evaluate(after)}
