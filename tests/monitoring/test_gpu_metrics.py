"""GPU gauges through nvidia-ml-py, with a fake NVML in place of a GPU and its driver.

Each test scrapes /metrics of a real metrics app on loopback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmcloud.monitoring import sources
from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.monitoring.metrics_app import create_metrics_app
from llmcloud.settings import Settings
from tests.conftest import RunningServer
from tests.monitoring.fake_nvml import FakeGpu, FakeNvml

GIB = 1024**3
GPU_METRICS = (
    "llmcloud_gpu_utilization_ratio",
    "llmcloud_gpu_memory_used_bytes",
    "llmcloud_gpu_memory_total_bytes",
)

Series = dict[str, dict[str, float]]


@dataclass
class MetricsServer:
    """A running metrics app, and the registry in which the test binds its sources."""

    running: RunningServer
    registry: AppRegistry

    @property
    def url(self) -> str:
        return self.running.url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MetricsServer]:
    app = create_metrics_app(Settings(data_dir=tmp_path), "socks")
    running = RunningServer(app).start()
    yield MetricsServer(running, app.state.metrics)
    running.stop()


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA H100 80GB HBM3", 35, memory_total=80 * GIB, memory_used=12 * GIB),
        FakeGpu("NVIDIA L4", 90, memory_total=24 * GIB, memory_used=20 * GIB),
    ]


def scrape(server: MetricsServer) -> Series:
    """Return the GPU series of one scrape: metric name to GPU index to value."""
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    series: Series = {name: {} for name in GPU_METRICS}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in series:
                series[sample.name][sample.labels["gpu"]] = sample.value
    return series


def gpu_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "llmcloud.monitoring"
        and record.levelno >= logging.WARNING
        and "GPU" in record.message
    ]


def test_two_gpus_reported_by_index(
    server: MetricsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeNvml(two_gpus()).install(monkeypatch)
    sources.watch_data_dir(server.registry, tmp_path)

    series = scrape(server)

    assert series["llmcloud_gpu_utilization_ratio"] == {"0": 0.35, "1": 0.9}
    assert series["llmcloud_gpu_memory_used_bytes"] == {"0": 12 * GIB, "1": 20 * GIB}
    assert series["llmcloud_gpu_memory_total_bytes"] == {"0": 80 * GIB, "1": 24 * GIB}


def test_gpus_named_in_start_log(
    server: MetricsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="llmcloud.monitoring")
    FakeNvml(two_gpus()).install(monkeypatch)

    sources.watch_data_dir(server.registry, tmp_path)

    assert "GPU metrics on for 2 GPUs (0: NVIDIA H100 80GB HBM3, 1: NVIDIA L4)" in caplog.text


@pytest.mark.parametrize(
    "error", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
)
def test_no_driver_gives_no_gpu_series(
    server: MetricsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: int,
) -> None:
    FakeNvml(two_gpus()).install(monkeypatch)
    sources.watch_data_dir(server.registry, tmp_path)  # GPUs first, so that the series exist before
    FakeNvml(two_gpus(), init_error=error).install(monkeypatch)

    sources.watch_data_dir(server.registry, tmp_path)
    series = scrape(server)

    for name in GPU_METRICS:
        assert series[name] == {}, name
    assert gpu_warnings(caplog) == []


def test_no_gpu_gives_no_gpu_series(
    server: MetricsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeNvml([]).install(monkeypatch)

    sources.watch_data_dir(server.registry, tmp_path)
    series = scrape(server)

    for name in GPU_METRICS:
        assert series[name] == {}, name


def test_lost_gpu_logged_once(
    server: MetricsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    FakeNvml(gpus).install(monkeypatch)
    sources.watch_data_dir(server.registry, tmp_path)
    scrape(server)
    gpus[1].utilization_error = pynvml.NVML_ERROR_GPU_IS_LOST
    gpus[1].memory_error = pynvml.NVML_ERROR_GPU_IS_LOST

    first = scrape(server)
    second = scrape(server)

    for series in (first, second):
        assert series["llmcloud_gpu_utilization_ratio"] == {"0": 0.35}
        assert series["llmcloud_gpu_memory_used_bytes"] == {"0": 12 * GIB}
        assert series["llmcloud_gpu_memory_total_bytes"] == {"0": 80 * GIB}
    warnings = gpu_warnings(caplog)
    assert len(warnings) == 2  # one for utilisation, one for memory, across both scrapes
    assert all("GPU 1" in record.message for record in warnings)
    assert all("GPU is lost" in record.message for record in warnings)


def test_recovered_gpu_reported_again(
    server: MetricsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    FakeNvml(gpus).install(monkeypatch)
    sources.watch_data_dir(server.registry, tmp_path)
    gpus[0].utilization_error = pynvml.NVML_ERROR_TIMEOUT
    scrape(server)
    gpus[0].utilization_error = None
    recovered = scrape(server)
    gpus[0].utilization_error = pynvml.NVML_ERROR_TIMEOUT
    scrape(server)

    assert recovered["llmcloud_gpu_utilization_ratio"] == {"0": 0.35, "1": 0.9}
    assert len(gpu_warnings(caplog)) == 2  # a failure after a recovery is logged again


def test_unsupported_utilization_keeps_memory(
    server: MetricsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus = two_gpus()
    gpus[1].utilization_error = pynvml.NVML_ERROR_NOT_SUPPORTED
    FakeNvml(gpus).install(monkeypatch)
    sources.watch_data_dir(server.registry, tmp_path)

    series = scrape(server)

    assert series["llmcloud_gpu_utilization_ratio"] == {"0": 0.35}
    assert series["llmcloud_gpu_memory_used_bytes"] == {"0": 12 * GIB, "1": 20 * GIB}


def test_fake_nvml_raises_real_error_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).install(monkeypatch)

    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    fake.init_error = None
    pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(0)
