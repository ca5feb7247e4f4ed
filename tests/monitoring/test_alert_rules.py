"""The shipped Prometheus rules pass promtool, and name the built-in alerter's alerts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llmcloud.monitoring import conditions
from llmcloud.monitoring.samples import Sample

RULES_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing; run scripts/install-test-packages"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_pass_promtool_unit_tests() -> None:
    result = promtool("test", "rules", "alerts.test.yml")

    assert result.returncode == 0, result.stdout + result.stderr


def rule_names() -> set[str]:
    document = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    return {rule["alert"] for group in document["groups"] for rule in group["rules"]}


def names_under_test() -> set[str]:
    document = yaml.safe_load((RULES_DIR / "alerts.test.yml").read_text())
    return {case["alertname"] for test in document["tests"] for case in test["alert_rule_test"]}


def test_every_rule_has_a_unit_test() -> None:
    assert rule_names() <= names_under_test()


def test_builtin_alerts_are_prometheus_rules() -> None:
    failing = Sample(
        time=0.0,
        requests_per_second=1.0,
        errors_per_second=1.0,
        ttft_p95_seconds=60.0,
        queue_rejections=3.0,
        backends_up={"gpu": False},
        backup_age_seconds=10 * 3600.0,
        backup_interval_seconds=3600.0,
        backup_failures=1.0,
        restore_age_seconds=30 * 86400.0,
        certificate_days_left={"web": 3.0},
        renewal_failures=1.0,
        disk_free_percent=1.0,
        socks_denied_per_second=5.0,
    )
    fired = {name for name, _ in conditions.evaluate(failing)}

    assert fired == rule_names() - {"PartDown"}


def test_builtin_alerts_quiet_on_healthy_sample() -> None:
    healthy = Sample(
        time=0.0,
        requests_per_second=10.0,
        errors_per_second=0.0,
        ttft_p95_seconds=0.5,
        queue_rejections=0.0,
        backends_up={"gpu": True},
        backup_age_seconds=600.0,
        backup_interval_seconds=3600.0,
        backup_failures=0.0,
        restore_age_seconds=86400.0,
        certificate_days_left={"web": 80.0},
        renewal_failures=0.0,
        disk_free_percent=50.0,
        socks_denied_per_second=0.0,
    )

    assert conditions.evaluate(healthy) == {}


def rule_pending_seconds() -> dict[str, float]:
    """Return the `for:` of each rule that has one, in seconds (promtool durations s, m, h)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    document = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    return {
        rule["alert"]: float(rule["for"][:-1]) * units[rule["for"][-1]]
        for group in document["groups"]
        for rule in group["rules"]
        if "for" in rule
    }


def test_builtin_pending_durations_match_rules() -> None:
    expected = rule_pending_seconds()
    del expected["PartDown"]  # the built-in alerter runs inside the part; it has no such alert

    assert expected == conditions.PENDING_SECONDS
