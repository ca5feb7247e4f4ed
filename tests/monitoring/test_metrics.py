"""The metric definitions follow Prometheus naming, and the exposition parses."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmcloud.monitoring import metrics
from llmcloud.monitoring.metrics import REGISTRY, AppRegistry, SourcedMetric

# Labels that could carry personal data or unbounded values.
FORBIDDEN_LABELS = {
    "user",
    "username",
    "email",
    "ip",
    "client",
    "chat",
    "chat_id",
    "prompt",
    "path",
}


def defined() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(metrics).items()
        if isinstance(value, Counter | Gauge | Histogram | SourcedMetric)
    }


def family_name(metric: object) -> str:
    if isinstance(metric, SourcedMetric):
        return metric.name
    return str(metric._name)  # type: ignore[attr-defined]


def label_names(metric: object) -> tuple[str, ...]:
    if isinstance(metric, SourcedMetric):
        return metric.labels
    return tuple(metric._labelnames)  # type: ignore[attr-defined]


def test_metrics_have_llmcloud_prefix() -> None:
    for metric in defined().values():
        assert family_name(metric).startswith("llmcloud_"), family_name(metric)


def test_metric_labels_hold_no_personal_data() -> None:
    for metric in defined().values():
        assert not FORBIDDEN_LABELS & set(label_names(metric)), family_name(metric)


def test_histograms_use_base_units() -> None:
    for metric in defined().values():
        if isinstance(metric, Histogram):
            assert family_name(metric).endswith("_seconds"), family_name(metric)


def test_ttft_target_is_a_bucket_bound() -> None:
    assert metrics.TTFT_TARGET_SECONDS in metrics.TTFT_BUCKETS


def test_exposition_parses_and_matches_definitions() -> None:
    metrics.http_requests.labels("web", "/x", "GET", "200").inc()
    metrics.llm_time_to_first_token.labels("engine", "m").observe(0.3)
    text = generate_latest(REGISTRY).decode()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    names = {family_name(metric) for metric in defined().values()}
    ours = {name for name in families if name.startswith("llmcloud_")}

    assert ours <= names
    assert "llmcloud_llm_time_to_first_token_seconds" in ours
    assert families["llmcloud_llm_time_to_first_token_seconds"].type == "histogram"
    assert families["llmcloud_http_requests"].type == "counter"


def test_exposition_has_process_metrics() -> None:
    text = generate_latest(REGISTRY).decode()

    assert "process_cpu_seconds_total" in text


def test_exposed_labels_match_definitions() -> None:
    metrics.http_requests.labels("web", "/y", "GET", "200").inc()
    text = generate_latest(REGISTRY).decode()
    by_family = {family_name(metric): set(label_names(metric)) for metric in defined().values()}

    for family in text_string_to_metric_families(text):
        if family.name not in by_family:
            continue
        for sample in family.samples:
            extra = set(sample.labels) - by_family[family.name] - {"le"}
            assert not extra, f"{sample.name} has undefined labels {extra}"


def test_sourced_metric_survives_failing_source() -> None:
    registry = AppRegistry()
    registry.set_source(metrics.socks_bytes, lambda: 1 / 0)  # type: ignore[arg-type,return-value]

    text = generate_latest(registry).decode()

    assert "llmcloud_http_requests_total" in text
    assert "# TYPE llmcloud_socks_bytes_total counter" in text


def test_sourced_metrics_bound_per_app() -> None:
    first, second = AppRegistry(), AppRegistry()
    first.set_source(metrics.models_loaded, lambda: {(): 1.0})
    second.set_source(metrics.models_loaded, lambda: {(): 2.0})

    first_text = generate_latest(first).decode()
    second_text = generate_latest(second).decode()

    assert "llmcloud_models_loaded 1.0" in first_text
    assert "llmcloud_models_loaded 2.0" in second_text
    assert "llmcloud_models_loaded" not in generate_latest(REGISTRY).decode()


def test_app_registry_serves_process_wide_metrics() -> None:
    metrics.http_requests.labels("web", "/z", "GET", "200").inc()

    text = generate_latest(AppRegistry()).decode()

    assert 'llmcloud_http_requests_total{app="web",method="GET",route="/z",status="200"}' in text
    assert "process_cpu_seconds_total" in text
