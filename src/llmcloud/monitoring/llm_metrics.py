"""Recording of LLM request metrics, for the engine and the gateway (gateway.chat_metrics).

`GenerationMetrics` binds the labelled children once per request, so each
streamed chunk costs one clock read and one histogram observation.
"""

from __future__ import annotations

import time

from llmcloud.monitoring import metrics


class _Series:
    """The labelled children of one component and model that each request uses."""

    __slots__ = ("inter_token", "running", "ttft", "waiting")

    def __init__(self, component: str, model: str) -> None:
        self.ttft = metrics.llm_time_to_first_token.labels(component, model)
        self.inter_token = metrics.llm_inter_token_latency.labels(component, model)
        self.running = metrics.llm_requests_running.labels(component, model)
        self.waiting = metrics.llm_requests_waiting.labels(component, model)


# Looked up once per request rather than through labels(), which takes a lock and checks
# the label values each time. There is one entry per component and model that served a
# request, as there is one series.
_series: dict[tuple[str, str], _Series] = {}


def series_for(component: str, model: str) -> _Series:
    series = _series.get((component, model))
    if series is None:
        series = _series[component, model] = _Series(component, model)
    return series


class GenerationMetrics:
    """Time to first token, inter-token latency, duration and tokens of one generation.

    `started` is the `time.perf_counter()` at which the request was accepted;
    None means now.
    """

    def __init__(self, component: str, model: str, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.last_chunk: float | None = None
        self.component = component
        self.model = model
        series = series_for(component, model)
        self._ttft = series.ttft
        self._inter_token = series.inter_token
        self._done = False

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.last_chunk is None:
            self._ttft.observe(now - self.started)
        else:
            self._inter_token.observe(now - self.last_chunk)
        self.last_chunk = now

    def finished(
        self, generated_tokens: int | None, prompt_tokens: int | None, *, failed: bool
    ) -> None:
        """Record the end of the request, once; later calls do nothing."""
        if self._done:
            return
        self._done = True
        labels = (self.component, self.model)
        if failed:
            metrics.llm_requests_failed.labels(*labels).inc()
            return
        metrics.llm_request_duration.labels(*labels).observe(time.perf_counter() - self.started)
        if prompt_tokens:
            metrics.llm_prompt_tokens.labels(*labels).inc(prompt_tokens)
        if generated_tokens:
            metrics.llm_generated_tokens.labels(*labels).inc(generated_tokens)


def record_queue_rejection(component: str, model: str) -> None:
    metrics.llm_queue_rejections.labels(component, model).inc()


def record_model_load(model: str, seconds: float | None) -> None:
    """Count a model load; `seconds` is its duration, or None when it failed."""
    if seconds is None:
        metrics.model_loads.labels(model, "error").inc()
        return
    metrics.model_loads.labels(model, "ok").inc()
    metrics.model_load_duration.labels(model).observe(seconds)


def record_slots(component: str, model: str, in_flight: int, slots: int) -> None:
    """Split a model's accepted requests into running (up to its slots) and waiting."""
    metrics.llm_requests_running.labels(component, model).set(min(in_flight, slots))
    metrics.llm_requests_waiting.labels(component, model).set(max(0, in_flight - slots))
