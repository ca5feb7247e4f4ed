"""Every llmcloud metric: name, type, unit, labels and help, in one place.

Names follow Prometheus conventions: the `llmcloud_` prefix, base units
(seconds, bytes, ratios), `_total` on counters, histograms rather than
summaries. Label values are bounded: route templates instead of paths, model
and backend names from the configuration, fixed outcome words. No label contains
a user name, email, IP address, chat id or prompt text.

Counters and histograms live in `REGISTRY`, which is process-wide and also
carries the standard process and platform collectors. Values that another
part already keeps (users by role, loaded models, backup times, disk free) are
`SourcedMetric`s, read from that part at scrape time. Each app binds their
sources in an `AppRegistry` of its own, which its /metrics serves, so that
two apps in one process (as in tests) each report their own parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger("llmcloud.monitoring")

# The `_created` series double the series count and no rule or chart of llmcloud reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Route label of every request whose path matches no route, so that a scanner trying random
# paths adds no series.
UNMATCHED_ROUTE = "<unmatched>"

# Target of time to first token, in seconds; a bucket bound sits on it so that the share of
# requests over target is exact. The alert rule and the built-in alerter use the same figure.
TTFT_TARGET_SECONDS = 2.0
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, TTFT_TARGET_SECONDS, 5.0, 10.0, 30.0, 60.0, 120.0)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
LLM_DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[str, ...]
Source = Callable[[], Mapping[Labels, float]]


class SourcedMetric:
    """The definition of a gauge or counter whose samples a source function returns.

    The source maps label values to a value; a counter's source returns totals
    that only grow. Counter names are given without `_total`, which the
    exposition adds. An `AppRegistry` binds the sources, and a metric without
    one there has no samples.
    """

    def __init__(self, kind: str, name: str, documentation: str, labels: Labels = ()) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labels = labels
        SOURCED_METRICS.append(self)

    def collect_from(self, source: Source | None) -> GaugeMetricFamily | CounterMetricFamily:
        family = self._family()
        if source is None:
            return family
        try:
            samples = source()
        except Exception:  # a broken source must not hide the other metrics
            logger.warning("metrics source of %s failed", self.name, exc_info=True)
            return family
        for label_values, value in samples.items():
            family.add_metric(list(label_values), value)
        return family

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


SOURCED_METRICS: list[SourcedMetric] = []


class AppRegistry(CollectorRegistry):
    """The metrics of one app: everything in REGISTRY, and the sources that this app bound."""

    def __init__(self) -> None:
        super().__init__(auto_describe=False)
        self._sources: dict[str, Source] = {}

    def set_source(self, metric: SourcedMetric, source: Source | None) -> None:
        """Bind `metric` to `source` in this app; None removes the binding."""
        if source is None:
            self._sources.pop(metric.name, None)
        else:
            self._sources[metric.name] = source

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        for metric in SOURCED_METRICS:
            yield metric.collect_from(self._sources.get(metric.name))


# HTTP, on engine, web and socks. `app` is the process kind: engine, web or socks.
http_requests = Counter(
    "llmcloud_http_requests_total",
    "HTTP requests by route template, method and status code.",
    ["app", "route", "method", "status"],
    registry=REGISTRY,
)
http_request_duration = Histogram(
    "llmcloud_http_request_duration_seconds",
    "Time from receiving an HTTP request to the end of its response body.",
    ["app", "route", "method"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)

# LLM requests, by model. `component` is `engine` (llama.cpp in this process) or `gateway`
# (the web app's view of the backends, network included).
llm_time_to_first_token = Histogram(
    "llmcloud_llm_time_to_first_token_seconds",
    "Time from accepting a generation request to its first generated token, queue and model "
    "load included.",
    ["component", "model"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
llm_inter_token_latency = Histogram(
    "llmcloud_llm_inter_token_latency_seconds",
    "Time between two streamed chunks of generated text.",
    ["component", "model"],
    buckets=INTER_TOKEN_BUCKETS,
    registry=REGISTRY,
)
llm_request_duration = Histogram(
    "llmcloud_llm_request_duration_seconds",
    "Time from accepting a generation request to its last token.",
    ["component", "model"],
    buckets=LLM_DURATION_BUCKETS,
    registry=REGISTRY,
)
llm_prompt_tokens = Counter(
    "llmcloud_llm_prompt_tokens_total",
    "Prompt tokens of finished generation requests.",
    ["component", "model"],
    registry=REGISTRY,
)
llm_generated_tokens = Counter(
    "llmcloud_llm_generated_tokens_total",
    "Tokens generated by finished generation requests.",
    ["component", "model"],
    registry=REGISTRY,
)
llm_requests_running = Gauge(
    "llmcloud_llm_requests_running",
    "Generation requests that hold a decoding slot or a backend.",
    ["component", "model"],
    registry=REGISTRY,
)
llm_requests_waiting = Gauge(
    "llmcloud_llm_requests_waiting",
    "Generation requests waiting for a decoding slot or a backend.",
    ["component", "model"],
    registry=REGISTRY,
)
llm_queue_rejections = Counter(
    "llmcloud_llm_queue_rejections_total",
    "Generation requests rejected with 503 because the model's queue was full.",
    ["component", "model"],
    registry=REGISTRY,
)
llm_requests_failed = Counter(
    "llmcloud_llm_requests_failed_total",
    "Generation requests that ended with an error after they were accepted.",
    ["component", "model"],
    registry=REGISTRY,
)
model_loads = Counter(
    "llmcloud_model_loads_total",
    "Model loads in the engine, by outcome (`ok` or `error`).",
    ["model", "outcome"],
    registry=REGISTRY,
)
model_load_duration = Histogram(
    "llmcloud_model_load_duration_seconds",
    "Time to load a model into memory.",
    ["model"],
    buckets=LOAD_BUCKETS,
    registry=REGISTRY,
)
models_loaded = SourcedMetric(
    "gauge",
    "llmcloud_models_loaded",
    "Models loaded in the engine now.",
)
backend_up = SourcedMetric(
    "gauge",
    "llmcloud_backend_up",
    "1 when the gateway's last health check of the backend passed, else 0.",
    ("backend",),
)
backend_errors = Counter(
    "llmcloud_backend_errors_total",
    "Failed requests to a backend: connection errors, timeouts and 5xx answers.",
    ["backend"],
    registry=REGISTRY,
)

# Accounts.
logins = Counter(
    "llmcloud_logins_total",
    "Log-in attempts by provider (`local`, `github`, an OIDC provider name) and outcome.",
    ["provider", "outcome"],
    registry=REGISTRY,
)
users = SourcedMetric(
    "gauge",
    "llmcloud_users",
    "Accounts by role.",
    ("role",),
)
sessions_active = SourcedMetric(
    "gauge",
    "llmcloud_sessions_active",
    "Login sessions that have not expired.",
)
api_key_requests = Counter(
    "llmcloud_api_key_requests_total",
    "Requests to the user API under an API key, by outcome (`ok`, `invalid_key`, `error`).",
    ["outcome"],
    registry=REGISTRY,
)

# Backups, certificates and the SOCKS proxy keep their numbers in status objects of their
# own; these metrics read them at scrape time through `AppRegistry.set_source`.
backup_last_success = SourcedMetric(
    "gauge",
    "llmcloud_backup_last_success_timestamp_seconds",
    "Unix time at which the last successful backup finished.",
)
backup_last_verified_restore = SourcedMetric(
    "gauge",
    "llmcloud_backup_last_verified_restore_timestamp_seconds",
    "Unix time at which the last test restore proved a backup restorable.",
)
backup_interval = SourcedMetric(
    "gauge",
    "llmcloud_backup_interval_seconds",
    "Configured time between two scheduled backups.",
)
backup_duration = SourcedMetric(
    "gauge",
    "llmcloud_backup_duration_seconds",
    "Duration of the last successful backup.",
)
backup_size = SourcedMetric(
    "gauge",
    "llmcloud_backup_size_bytes",
    "Size of the last successful backup, encrypted.",
)
backup_failures = SourcedMetric(
    "counter",
    "llmcloud_backup_failures",
    "Backups and test restores that failed.",
)
certificate_not_after = SourcedMetric(
    "gauge",
    "llmcloud_certificate_not_after_timestamp_seconds",
    "Unix time at which a served certificate expires, by where it is served.",
    ("served_at",),
)
certificate_renewal_failures = SourcedMetric(
    "counter",
    "llmcloud_certificate_renewal_failures",
    "Certificate renewals that failed, by where the certificate is served.",
    ("served_at",),
)
socks_connections = SourcedMetric(
    "counter",
    "llmcloud_socks_connections",
    "SOCKS connections by outcome (fixed words such as `ok`, `denied`, `login_failed`).",
    ("outcome",),
)
socks_bytes = SourcedMetric(
    "counter",
    "llmcloud_socks_bytes",
    "Bytes relayed by the SOCKS proxy, by direction (`to_destination`, `to_client`).",
    ("direction",),
)
socks_denied_destinations = SourcedMetric(
    "counter",
    "llmcloud_socks_denied_destinations",
    "SOCKS requests for a destination outside the allow list.",
)

# Host.
data_dir_free = SourcedMetric(
    "gauge",
    "llmcloud_data_dir_free_bytes",
    "Free space on the file system of the data dir, for unprivileged users.",
)
data_dir_size = SourcedMetric(
    "gauge",
    "llmcloud_data_dir_filesystem_size_bytes",
    "Size of the file system of the data dir.",
)
gpu_utilization = SourcedMetric(
    "gauge",
    "llmcloud_gpu_utilization_ratio",
    "Share of the last sample period in which the GPU was busy, 0 to 1.",
    ("gpu",),
)
gpu_memory_used = SourcedMetric(
    "gauge",
    "llmcloud_gpu_memory_used_bytes",
    "GPU memory in use.",
    ("gpu",),
)
gpu_memory_total = SourcedMetric(
    "gauge",
    "llmcloud_gpu_memory_total_bytes",
    "GPU memory in all.",
    ("gpu",),
)

# The built-in alerter.
alerts_firing = Gauge(
    "llmcloud_alerts_firing",
    "Alerts of the built-in alerter that fire now.",
    registry=REGISTRY,
)
alert_notifications = Counter(
    "llmcloud_alert_notifications_total",
    "Alert messages the built-in alerter tried to send, by channel (`webhook`, `email`) and "
    "outcome (`ok`, `error`).",
    ["channel", "outcome"],
    registry=REGISTRY,
)
