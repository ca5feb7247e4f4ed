"""The alert conditions of the built-in alerter, the same as deploy/prometheus/alerts.yml.

Each condition looks at the newest sample and returns the alerts that fire,
keyed by alert name and subject, with a one-line description. The thresholds
and the pending durations are the ones in the shipped Prometheus rules; tests
check that both name the same alerts and give them the same `for:` durations.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcloud.monitoring.metrics import TTFT_TARGET_SECONDS
from llmcloud.monitoring.samples import Sample

ERROR_RATIO_LIMIT = 0.05
CERTIFICATE_DAYS_LIMIT = 14.0
DISK_FREE_PERCENT_LIMIT = 10.0
RESTORE_AGE_LIMIT_SECONDS = 7 * 86400.0
SOCKS_DENIED_PER_SECOND_LIMIT = 0.2

# Seconds that a condition must hold before its alert fires: the `for:` of each rule in
# deploy/prometheus/alerts.yml. An alert not listed fires at its first failing sample.
PENDING_SECONDS: dict[str, float] = {
    "BackendDown": 120.0,
    "NoBackendUp": 60.0,
    "HighErrorRate": 300.0,
    "SlowFirstToken": 600.0,
    "DiskLow": 300.0,
}

# (alert name, subject) to description.
Firing = dict[tuple[str, str], str]
Condition = Callable[[Sample], Firing]


def backend_down(sample: Sample) -> Firing:
    return {
        ("BackendDown", name): f"backend {name} fails its health checks"
        for name, up in sample.backends_up.items()
        if not up
    }


def no_backend_up(sample: Sample) -> Firing:
    if sample.backends_up and not any(sample.backends_up.values()):
        return {("NoBackendUp", ""): "no model backend is up; chats fail"}
    return {}


def high_error_rate(sample: Sample) -> Firing:
    requests, errors = sample.requests_per_second, sample.errors_per_second
    if not requests or errors is None or errors / requests <= ERROR_RATIO_LIMIT:
        return {}
    return {("HighErrorRate", ""): f"{errors / requests:.0%} of HTTP requests fail with 5xx"}


def slow_first_token(sample: Sample) -> Firing:
    p95 = sample.ttft_p95_seconds
    if p95 is None or p95 <= TTFT_TARGET_SECONDS:
        return {}
    return {
        ("SlowFirstToken", ""): f"p95 time to first token is {p95:.1f} s, over the target of "
        f"{TTFT_TARGET_SECONDS:g} s"
    }


def queue_rejections(sample: Sample) -> Firing:
    if not sample.queue_rejections:
        return {}
    return {("QueueRejections", ""): f"{sample.queue_rejections:g} requests rejected: queue full"}


def backup_too_old(sample: Sample) -> Firing:
    age, interval = sample.backup_age_seconds, sample.backup_interval_seconds
    if age is None or not interval or age <= 2 * interval:
        return {}
    return {("BackupTooOld", ""): f"last successful backup is {age / 3600:.1f} hours old"}


def backup_failing(sample: Sample) -> Firing:
    if not sample.backup_failures:
        return {}
    return {
        ("BackupFailing", ""): "a backup or test restore failed; `llmcloud backup status` "
        "shows the error"
    }


def no_verified_restore(sample: Sample) -> Firing:
    age = sample.restore_age_seconds
    if age is None or age <= RESTORE_AGE_LIMIT_SECONDS:
        return {}
    return {
        ("NoVerifiedRestore", ""): f"no backup was restored in a test for {age / 86400:.0f} days"
    }


def certificate_expiring(sample: Sample) -> Firing:
    return {
        ("CertificateExpiring", name): f"certificate of {name} expires in {days:.1f} days"
        for name, days in sample.certificate_days_left.items()
        if days < CERTIFICATE_DAYS_LIMIT
    }


def renewal_failing(sample: Sample) -> Firing:
    if not sample.renewal_failures:
        return {}
    return {("CertificateRenewalFailing", ""): "a certificate renewal failed"}


def disk_low(sample: Sample) -> Firing:
    free = sample.disk_free_percent
    if free is None or free >= DISK_FREE_PERCENT_LIMIT:
        return {}
    return {("DiskLow", ""): f"data dir file system has {free:.1f}% free"}


def socks_denied_spike(sample: Sample) -> Firing:
    # The rate is None unless monitoring_socks_metrics_url names the proxy's /metrics,
    # because the proxy runs in its own process (see llmcloud.monitoring.scrape).
    rate = sample.socks_denied_per_second
    if rate is None or rate <= SOCKS_DENIED_PER_SECOND_LIMIT:
        return {}
    return {("SocksDeniedSpike", ""): f"SOCKS proxy denies {rate:.1f} destinations per second"}


CONDITIONS: list[Condition] = [
    backend_down,
    no_backend_up,
    high_error_rate,
    slow_first_token,
    queue_rejections,
    backup_too_old,
    backup_failing,
    no_verified_restore,
    certificate_expiring,
    renewal_failing,
    disk_low,
    socks_denied_spike,
]


def evaluate(sample: Sample) -> Firing:
    firing: Firing = {}
    for condition in CONDITIONS:
        firing.update(condition(sample))
    return firing
