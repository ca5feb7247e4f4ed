"""Periodic samples of the service's own metrics, for the status page and the alerter.

Every `monitoring_sample_interval` seconds the sampler reads the web app's
registry (the metrics that its /metrics serves), plus the series of other
processes that `scrape` functions return (the SOCKS proxy's, see
llmcloud.monitoring.scrape), turns counters into rates over
the interval and histograms into a p95, and keeps the result in a ring buffer
that covers `monitoring_history_hours`. This is
what lets the status page chart and the built-in alerter work without
Prometheus.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.registry import CollectorRegistry

from llmcloud.monitoring.metrics import REGISTRY

# One reading of the registry: (sample name, sorted label pairs) to value.
Reading = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True)
class Sample:
    """Derived values at one moment; a rate is None on the first sample, which has no base."""

    time: float
    requests_per_second: float | None = None
    errors_per_second: float | None = None
    ttft_p95_seconds: float | None = None
    tokens_per_second: float | None = None
    queue_waiting: float = 0.0
    queue_rejections: float | None = None
    backends_up: dict[str, bool] = field(default_factory=dict)
    backup_age_seconds: float | None = None
    backup_interval_seconds: float | None = None
    # Backups and test restores that failed since the previous sample.
    backup_failures: float | None = None
    restore_age_seconds: float | None = None
    certificate_days_left: dict[str, float] = field(default_factory=dict)
    renewal_failures: float | None = None
    disk_free_percent: float | None = None
    socks_denied_per_second: float | None = None


def read_registry(registry: CollectorRegistry = REGISTRY) -> Reading:
    reading: Reading = {}
    for family in registry.collect():
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            reading[key] = sample.value
    return reading


def total(reading: Reading, name: str, **match: str) -> float | None:
    """Sum the samples of `name` whose labels include `match`; None when there are none."""
    values = [
        value
        for (sample, labels), value in reading.items()
        if sample == name and all((key, want) in labels for key, want in match.items())
    ]
    return sum(values) if values else None


def by_label(reading: Reading, name: str, label: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for (sample, labels), value in reading.items():
        if sample == name:
            key = dict(labels).get(label, "")
            result[key] = result.get(key, 0.0) + value
    return result


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Estimate a quantile from cumulative bucket counts the way Prometheus does.

    Interpolates linearly inside the bucket that contains the rank; a rank in the
    +Inf bucket returns the highest finite bound.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return None


class Sampler:
    """Keeps the recent samples; call `take()` on a timer."""

    def __init__(
        self,
        interval: float,
        history_seconds: float,
        registry: CollectorRegistry = REGISTRY,
        scrapes: list[Callable[[], Reading]] | None = None,
    ) -> None:
        self.interval = interval
        self.registry = registry
        self.scrapes = scrapes or []
        self.samples: deque[Sample] = deque(maxlen=max(2, int(history_seconds / interval)))
        self._previous: tuple[float, Reading] | None = None

    def take(self, now: float | None = None, reading: Reading | None = None) -> Sample:
        now = time.time() if now is None else now
        if reading is None:
            reading = read_registry(self.registry)
            for scrape in self.scrapes:
                reading.update(scrape())
        sample = derive(reading, now, self._previous)
        self._previous = (now, reading)
        self.samples.append(sample)
        return sample


def derive(reading: Reading, now: float, previous: tuple[float, Reading] | None) -> Sample:
    """Turn a registry reading, and the one before it, into a Sample."""
    backup_time = total(reading, "llmcloud_backup_last_success_timestamp_seconds")
    restore_time = total(reading, "llmcloud_backup_last_verified_restore_timestamp_seconds")
    free = total(reading, "llmcloud_data_dir_free_bytes")
    size = total(reading, "llmcloud_data_dir_filesystem_size_bytes")
    not_after = by_label(reading, "llmcloud_certificate_not_after_timestamp_seconds", "served_at")
    up = by_label(reading, "llmcloud_backend_up", "backend")
    sample = Sample(
        time=now,
        queue_waiting=total(reading, "llmcloud_llm_requests_waiting") or 0.0,
        backends_up={name: value >= 1 for name, value in up.items()},
        backup_age_seconds=now - backup_time if backup_time else None,
        backup_interval_seconds=total(reading, "llmcloud_backup_interval_seconds"),
        restore_age_seconds=now - restore_time if restore_time else None,
        certificate_days_left={name: (value - now) / 86400 for name, value in not_after.items()},
        disk_free_percent=100 * free / size if free is not None and size else None,
    )
    if previous is None:
        return sample
    return _with_rates(sample, reading, *previous)


def _with_rates(sample: Sample, reading: Reading, then: float, before: Reading) -> Sample:
    seconds = max(sample.time - then, 1e-9)

    def increase(name: str, **match: str) -> float:
        now_value = total(reading, name, **match) or 0.0
        # A counter that went down was reset by a restart; count from zero.
        before_value = total(before, name, **match) or 0.0
        return now_value - before_value if now_value >= before_value else now_value

    errors = sum(
        increase("llmcloud_http_requests_total", status=str(code)) for code in range(500, 600)
    )
    return Sample(
        **{
            **sample.__dict__,
            "requests_per_second": increase("llmcloud_http_requests_total") / seconds,
            "errors_per_second": errors / seconds,
            "tokens_per_second": increase("llmcloud_llm_generated_tokens_total") / seconds,
            "queue_rejections": increase("llmcloud_llm_queue_rejections_total"),
            "renewal_failures": increase("llmcloud_certificate_renewal_failures_total"),
            "backup_failures": increase("llmcloud_backup_failures_total"),
            "socks_denied_per_second": _socks_denied_rate(reading, before, increase, seconds),
            "ttft_p95_seconds": _ttft_p95(reading, before),
        }
    )


def _socks_denied_rate(
    reading: Reading, before: Reading, increase: Callable[[str], float], seconds: float
) -> float | None:
    """Return denied SOCKS destinations per second, or None unless both readings have them.

    A failed scrape of the proxy leaves its series out of a reading. Counting from zero
    across that gap would report the proxy's whole total as the increase of one interval.
    """
    name = "llmcloud_socks_denied_destinations_total"
    if total(reading, name) is None or total(before, name) is None:
        return None
    return increase(name) / seconds


def _ttft_p95(reading: Reading, before: Reading) -> float | None:
    """p95 time to first token over the interval, from the gateway's view when there is one."""
    name = "llmcloud_llm_time_to_first_token_seconds_bucket"
    components = {dict(labels).get("component") for sample, labels in reading if sample == name}
    component = "gateway" if "gateway" in components else "engine"
    buckets: dict[float, float] = {}
    for (sample, labels), value in reading.items():
        values = dict(labels)
        if sample != name or values.get("component") != component:
            continue
        bound = float(values["le"])
        old = before.get((sample, labels), 0.0)
        buckets[bound] = buckets.get(bound, 0.0) + (value - old if value >= old else value)
    return histogram_quantile(0.95, buckets)
