"""/metrics on the engine: the loopback-or-token rule, route labels, unknown paths."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from llmcloud.engine.app import create_app
from llmcloud.monitoring.metrics import UNMATCHED_ROUTE
from tests.conftest import RunningServer, engine_settings

TOKEN = "metrics-token-for-tests"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = engine_settings(tmp_path_factory.mktemp("engine"), metrics_token=TOKEN)
    server = RunningServer(create_app(settings)).start()
    yield server
    server.stop()


def series_count(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def test_metrics_open_to_loopback_without_token(engine: RunningServer) -> None:
    response = httpx.get(f"{engine.url}/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "llmcloud_http_requests_total" in response.text


def test_metrics_rejects_proxied_request_without_token(engine: RunningServer) -> None:
    response = httpx.get(f"{engine.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})

    assert response.status_code == 401
    assert "metrics_token" in response.json()["error"]


def test_metrics_accepts_proxied_request_with_token(engine: RunningServer) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {TOKEN}"}
    response = httpx.get(f"{engine.url}/metrics", headers=headers)

    assert response.status_code == 200


def test_metrics_rejects_wrong_token(engine: RunningServer) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer wrong"}
    response = httpx.get(f"{engine.url}/metrics", headers=headers)

    assert response.status_code == 401


def test_metrics_forbidden_remotely_without_configured_token(tmp_path: Path) -> None:
    app = create_app(engine_settings(tmp_path))
    with TestClient(app) as client:  # TestClient's client address is not loopback
        response = client.get("/metrics", headers={"Authorization": "Bearer anything"})

    assert response.status_code == 403
    assert "metrics_token" in response.json()["error"]


def test_requests_labelled_by_route_template(engine: RunningServer) -> None:
    httpx.post(f"{engine.url}/api/show", json={"model": "no-such-model"})
    text = httpx.get(f"{engine.url}/metrics").text

    assert 'route="/api/show",status="404"' in text


def test_unknown_paths_add_few_series(engine: RunningServer) -> None:
    before = series_count(httpx.get(f"{engine.url}/metrics").text)
    with httpx.Client(base_url=engine.url) as client:
        for _ in range(1000):
            client.get(f"/{secrets.token_hex(8)}/{secrets.token_hex(4)}")
        client.request("FOO", f"/{secrets.token_hex(8)}")
    text = httpx.get(f"{engine.url}/metrics").text

    assert series_count(text) - before <= 20
    assert f'route="{UNMATCHED_ROUTE}"' in text


def test_readyz_reports_low_disk(tmp_path: Path) -> None:
    settings = engine_settings(tmp_path, monitoring_min_free_disk_percent=100)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert "monitoring_min_free_disk_percent" in response.json()["failed"]["disk"]
