"""The web app's /metrics, its charts page, and gateway metrics from a real chat."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmcloud.monitoring import metrics
from llmcloud.monitoring.alerter import AlertState
from llmcloud.monitoring.metrics import REGISTRY
from tests.gateway.conftest import HELLO, collect, openai_backend, running_gateway
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import sign_up

TOKEN = "web-metrics-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def sample_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def test_web_metrics_report_backend_and_users(make_client: Callable[..., TestClient]) -> None:
    client = make_client(metrics_token=TOKEN)
    sign_up(client, "admin")

    text = client.get("/metrics", headers=BEARER).text

    assert sample_values(text, "llmcloud_users")[(("role", "admin"),)] == 1
    assert (("backend", "fake"),) in sample_values(text, "llmcloud_backend_up")
    assert sample_values(text, "llmcloud_sessions_active")[()] == 1


def test_web_metrics_need_token_from_test_client(client: TestClient) -> None:
    response = client.get("/metrics")

    assert response.status_code == 403


def test_web_requests_labelled_by_template(make_client: Callable[..., TestClient]) -> None:
    client = make_client(metrics_token=TOKEN)
    client.get("/chats/12345")

    text = client.get("/metrics", headers=BEARER).text

    assert 'route="/chats/{chat_id}"' in text or 'route="/chats/{chat_id:int}"' in text
    assert "/chats/12345" not in text


def test_charts_page_shows_charts(admin: TestClient) -> None:
    response = admin.get("/admin/charts")

    assert response.status_code == 200
    assert response.text.count("<svg") >= 8
    assert "Time to first token, p95" in response.text


def test_charts_page_marks_pending_alerts(admin: TestClient) -> None:
    alerter = admin.app.state.monitor.alerter  # type: ignore[attr-defined]
    alerter.active[("DiskLow", "")] = AlertState("data dir has 3.0% free", since=0.0)
    alerter.active[("BackendDown", "gpu")] = AlertState("gpu is down", since=0.0, firing=True)

    response = admin.get("/admin/charts")

    assert "<strong>DiskLow</strong> (pending): data dir has 3.0% free" in response.text
    assert "<strong>BackendDown</strong> (gpu): gpu is down" in response.text


def test_charts_json_returns_samples(admin: TestClient) -> None:
    response = admin.get("/admin/charts.json")

    assert response.status_code == 200
    assert len(response.json()["samples"]) >= 1


def test_charts_page_needs_admin(make_client: Callable[..., TestClient]) -> None:
    first = make_client()
    sign_up(first, "admin")
    second = make_client()
    sign_up(second, "someone")

    response = second.get("/admin/charts")

    assert response.status_code in (303, 403)


@pytest.mark.anyio
async def test_gateway_records_ttft_by_model(fakes: Callable[..., FakeBackend]) -> None:
    child = metrics.llm_time_to_first_token.labels("gateway", "fake-model")
    before = sum(bucket.get() for bucket in child._buckets)
    async with running_gateway(openai_backend("vllm", fakes())) as gateway:
        await collect(gateway.chat("fake-model", HELLO))

    assert sum(bucket.get() for bucket in child._buckets) == before + 1
    assert metrics.llm_requests_running.labels("gateway", "fake-model")._value.get() == 0


def test_logins_counted_by_outcome(make_client: Callable[..., TestClient]) -> None:
    client = make_client(metrics_token=TOKEN)
    sign_up(client, "admin")
    client.post("/logout", data={})
    other = make_client()
    other.post("/login", data={"username": "admin", "password": "wrong password"})

    text = client.get("/metrics", headers=BEARER).text
    values = sample_values(text, "llmcloud_logins_total")

    assert values[(("outcome", "invalid_credentials"), ("provider", "local"))] >= 1


def test_api_key_requests_counted(make_client: Callable[..., TestClient]) -> None:
    client = make_client(metrics_token=TOKEN)
    client.get("/v1/models", headers={"Authorization": "Bearer sk-not-a-key"})

    text = client.get("/metrics", headers=BEARER).text

    assert (
        sample_values(text, "llmcloud_api_key_requests_total")[(("outcome", "invalid_key"),)] >= 1
    )


@pytest.mark.anyio
async def test_gateway_unknown_model_adds_no_series(fakes: Callable[..., FakeBackend]) -> None:
    from llmcloud.gateway import UnknownModel

    async with running_gateway(openai_backend("vllm", fakes())) as gateway:
        with pytest.raises(UnknownModel):
            await collect(gateway.chat("no-such-model-4711", HELLO))

    assert "no-such-model-4711" not in generate_latest(REGISTRY).decode()


def test_web_readyz_reports_low_disk(make_client: Callable[..., TestClient]) -> None:
    client = make_client(monitoring_min_free_disk_percent=100)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "monitoring_min_free_disk_percent" in response.json()["failed"]["disk"]
