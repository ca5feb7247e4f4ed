"""The engine records latency, tokens, slots and loads of real generations."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BUNDLED_MODEL, RunningServer, start_engine


def samples(engine: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{engine.url}/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(engine: RunningServer, name: str, **labels: str) -> float:
    return samples(engine).get((name, tuple(sorted(labels.items()))), 0.0)


def test_engine_records_generation_metrics(tmp_path: Path) -> None:
    # A fresh engine: gauges such as llmcloud_models_loaded read the scheduler of the most
    # recently started engine in this process, and other tests start engines of their own.
    engine = start_engine(tmp_path)
    try:
        _check_generation_metrics(engine)
    finally:
        engine.stop()


def _check_generation_metrics(engine: RunningServer) -> None:
    labels = {"component": "engine", "model": BUNDLED_MODEL}
    before_tokens = value(engine, "llmcloud_llm_generated_tokens_total", **labels)
    before_ttft = value(engine, "llmcloud_llm_time_to_first_token_seconds_count", **labels)
    body = {"model": BUNDLED_MODEL, "prompt": "Count to five", "options": {"num_predict": 6}}

    with httpx.stream("POST", f"{engine.url}/api/generate", json=body, timeout=60) as response:
        lines = list(response.iter_lines())

    assert len(lines) >= 2
    assert value(engine, "llmcloud_llm_generated_tokens_total", **labels) > before_tokens
    assert value(engine, "llmcloud_llm_time_to_first_token_seconds_count", **labels) == (
        before_ttft + 1
    )
    assert value(engine, "llmcloud_llm_inter_token_latency_seconds_count", **labels) >= 1
    assert value(engine, "llmcloud_llm_request_duration_seconds_count", **labels) >= 1
    assert value(engine, "llmcloud_llm_prompt_tokens_total", **labels) > 0
    assert value(engine, "llmcloud_llm_requests_running", **labels) == 0
    assert value(engine, "llmcloud_models_loaded") >= 1
    assert value(engine, "llmcloud_model_loads_total", model=BUNDLED_MODEL, outcome="ok") >= 1
