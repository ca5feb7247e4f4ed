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
    # A fresh engine, so that no other test's generations reach the process-wide counters
    # between the readings before and after.
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


def test_models_loaded_reported_per_engine(tmp_path: Path) -> None:
    # Two engines in one process: each /metrics reports its own scheduler's models.
    loaded = start_engine(tmp_path / "loaded")
    idle = start_engine(tmp_path / "idle")
    try:
        httpx.post(f"{loaded.url}/api/generate", json={"model": BUNDLED_MODEL}, timeout=60)
        loaded_count = value(loaded, "llmcloud_models_loaded")
        idle_count = value(idle, "llmcloud_models_loaded")
    finally:
        loaded.stop()
        idle.stop()

    assert loaded_count == 1
    assert idle_count == 0
