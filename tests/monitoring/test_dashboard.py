"""The Grafana dashboard and the alert rules name only metrics that llmcloud defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import Counter, Histogram

from llmcloud.monitoring import metrics
from llmcloud.monitoring.metrics import SourcedMetric

DEPLOY = Path(__file__).parents[2] / "deploy"
METRIC_NAME = re.compile(r"\bllmcloud_[a-z_]+")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "llmcloud.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exposed_names() -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, SourcedMetric):
            base, kind = value.name, value.kind
        elif isinstance(value, Counter | Histogram) or hasattr(value, "_name"):
            base, kind = str(value._name), value._type  # type: ignore[union-attr]
        else:
            continue
        if kind == "counter":
            names.add(f"{base}_total")
        elif kind == "histogram":
            names.update(f"{base}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(base)
    return names


def test_dashboard_names_defined_metrics() -> None:
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}

    assert used - exposed_names() == set()


def test_alert_rules_name_defined_metrics() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    used = set(METRIC_NAME.findall(text))

    assert used - exposed_names() == set()
