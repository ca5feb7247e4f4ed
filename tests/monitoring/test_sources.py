"""Sourced metrics read the parts that keep the numbers, at scrape time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client import generate_latest

from llmcloud.monitoring import sources
from llmcloud.monitoring.metrics import REGISTRY
from llmcloud.monitoring.samples import Sampler
from llmcloud.tls.status import STATUS


def test_certificate_expiry_exposed_and_sampled(tmp_path: Path) -> None:
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    STATUS.record_served("web:8443", tmp_path / "cert.pem", 1, not_after)
    STATUS.record_renewal("web:8443", tmp_path / "cert.pem", "ACME order failed")
    sources.watch_certificates()
    try:
        text = generate_latest(REGISTRY).decode()
        sample = Sampler(15, 3600).take()
    finally:
        STATUS.clear()

    assert 'llmcloud_certificate_not_after_timestamp_seconds{served_at="web:8443"}' in text
    assert 'llmcloud_certificate_renewal_failures_total{served_at="web:8443"} 1.0' in text
    assert 9.9 < sample.certificate_days_left["web:8443"] <= 10


def test_data_dir_free_space_exposed(tmp_path: Path) -> None:
    sources.watch_data_dir(tmp_path / "not-created-yet")

    sample = Sampler(15, 3600).take()

    assert sample.disk_free_percent is not None
    assert 0 <= sample.disk_free_percent <= 100


def test_gpu_watch_tolerates_missing_nvml() -> None:
    sources.watch_data_dir(Path("."))  # must not raise where no GPU or NVML exists
    text = generate_latest(REGISTRY).decode()

    assert "# TYPE llmcloud_gpu_utilization_ratio gauge" in text
