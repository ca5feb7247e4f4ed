"""A real Prometheus scrapes a running engine on loopback and queries its TTFT histogram."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BUNDLED_MODEL, RunningServer

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus missing; run scripts/install-test-packages"
)

TTFT_P95 = (
    "histogram_quantile(0.95, sum by (le) "
    '(llmcloud_llm_time_to_first_token_seconds_bucket{component="engine"}))'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path, engine: RunningServer) -> Iterator[str]:
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: llmcloud-engine\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{engine.port}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def wait_for_result(prometheus: str, expression: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(prometheus, expression)
        except httpx.HTTPError:
            result = []
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus returned nothing for {expression} within {timeout} s")


def test_prometheus_queries_ttft_histogram(engine: RunningServer, prometheus: str) -> None:
    body = {"model": BUNDLED_MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}}
    httpx.post(f"{engine.url}/api/generate", json=body, timeout=60).raise_for_status()

    up = wait_for_result(prometheus, 'up{job="llmcloud-engine"} == 1')
    p95 = wait_for_result(prometheus, TTFT_P95)

    assert up[0]["value"][1] == "1"
    assert 0 < float(p95[0]["value"][1]) <= 120


def test_prometheus_accepts_dashboard_queries(engine: RunningServer, prometheus: str) -> None:
    from tests.monitoring.test_dashboard import dashboard_expressions

    wait_for_result(prometheus, 'up{job="llmcloud-engine"} == 1')
    for expression in dashboard_expressions():
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression})

        assert response.json()["status"] == "success", expression
