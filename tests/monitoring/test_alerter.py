"""The built-in alerter: waits out pending durations, fires, groups repeats, resolves,
and counts failures to notify.

Samples carry their own times, so the tests use the pending and repeat durations of a
deployment and still take no time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmcloud.monitoring import metrics
from llmcloud.monitoring.alerter import Alerter
from llmcloud.monitoring.conditions import PENDING_SECONDS
from llmcloud.monitoring.samples import Sample
from llmcloud.settings import Settings
from tests.monitoring.receivers import SmtpReceiver, WebhookReceiver

REPEAT = 3600.0
DISK_PENDING = PENDING_SECONDS["DiskLow"]


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def alerter(tmp_path: Path, pending: dict[str, float] | None = None, **overrides: Any) -> Alerter:
    values: dict[str, Any] = {"data_dir": tmp_path, "alert_repeat_interval": REPEAT}
    values.update(overrides)
    return Alerter(Settings(**values), pending=pending)


def disk_sample(at: float, free_percent: float) -> Sample:
    return Sample(time=at, disk_free_percent=free_percent)


def evaluate(target: Alerter, sample: Sample) -> None:
    asyncio.run(target.evaluate(sample))


def test_alerter_fires_once_then_resolves(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url)

    evaluate(target, disk_sample(0, 3.0))
    evaluate(target, disk_sample(DISK_PENDING, 3.0))
    evaluate(target, disk_sample(DISK_PENDING + 60, 3.0))
    evaluate(target, disk_sample(DISK_PENDING + 120, 50.0))

    texts = webhook.texts()
    assert len(texts) == 2
    assert "[FIRING] DiskLow" in texts[0]
    assert "[RESOLVED] DiskLow" in texts[1]


def test_alerter_waits_pending_duration(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url)

    evaluate(target, disk_sample(0, 3.0))
    evaluate(target, disk_sample(DISK_PENDING - 1, 3.0))

    assert webhook.texts() == []
    assert metrics.alerts_firing._value.get() == 0
    assert not target.active[("DiskLow", "")].firing

    evaluate(target, disk_sample(DISK_PENDING, 3.0))

    assert len(webhook.texts()) == 1
    assert metrics.alerts_firing._value.get() == 1
    assert target.active[("DiskLow", "")].firing


def test_alerter_ignores_condition_cleared_while_pending(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url)

    evaluate(target, disk_sample(0, 3.0))
    evaluate(target, disk_sample(DISK_PENDING - 1, 50.0))
    evaluate(target, disk_sample(DISK_PENDING, 3.0))
    evaluate(target, disk_sample(DISK_PENDING + 60, 50.0))

    assert webhook.texts() == []
    assert target.active == {}


def test_alerter_pending_restarts_after_clearing(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url)

    evaluate(target, disk_sample(0, 3.0))
    evaluate(target, disk_sample(60, 50.0))
    evaluate(target, disk_sample(120, 3.0))
    evaluate(target, disk_sample(DISK_PENDING + 60, 3.0))

    assert webhook.texts() == []

    evaluate(target, disk_sample(DISK_PENDING + 120, 3.0))

    assert len(webhook.texts()) == 1


def test_alerter_fires_rule_without_pending_at_once(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url)

    evaluate(target, Sample(time=0, renewal_failures=1.0))

    assert "CertificateRenewalFailing" not in PENDING_SECONDS
    assert len(webhook.texts()) == 1
    assert "[FIRING] CertificateRenewalFailing" in webhook.texts()[0]


def test_alerter_takes_short_pending_override(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url, pending={"DiskLow": 2.0})

    evaluate(target, disk_sample(0, 3.0))
    evaluate(target, disk_sample(1, 3.0))

    assert webhook.texts() == []

    evaluate(target, disk_sample(2, 3.0))

    assert len(webhook.texts()) == 1


def test_alerter_repeats_after_interval(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url, pending={})

    evaluate(target, disk_sample(0, 3.0))
    evaluate(target, disk_sample(REPEAT - 1, 3.0))
    evaluate(target, disk_sample(REPEAT, 3.0))

    assert len(webhook.texts()) == 2


def test_alerter_groups_alerts_in_one_message(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url, pending={})

    evaluate(target, Sample(time=0, disk_free_percent=3.0, backends_up={"gpu": False}))

    assert len(webhook.texts()) == 1
    assert "DiskLow" in webhook.texts()[0]
    assert "NoBackendUp" in webhook.texts()[0]


def test_alerter_counts_failed_webhook(tmp_path: Path, webhook: WebhookReceiver) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url, pending={})
    failures = metrics.alert_notifications.labels("webhook", "error")
    before = failures._value.get()
    webhook.status = 500

    evaluate(target, disk_sample(0, 3.0))
    webhook.status = 200
    evaluate(target, disk_sample(60, 3.0))

    assert failures._value.get() == before + 1
    assert len(webhook.bodies) == 2  # the failed message is sent again at the next evaluation


def test_alerter_logs_unreachable_webhook(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = alerter(tmp_path, alert_webhook_url="http://127.0.0.1:9/unreachable", pending={})

    evaluate(target, disk_sample(0, 3.0))

    assert any(
        record.name == "llmcloud.monitoring"
        and "sending alerts by webhook failed" in record.message
        for record in caplog.records
    )


def test_alerter_sends_email(tmp_path: Path) -> None:
    smtp = SmtpReceiver().start()
    try:
        target = alerter(
            tmp_path,
            alert_email_to=["ops@example.org"],
            alert_smtp_host="127.0.0.1",
            alert_smtp_port=smtp.port,
            pending={},
        )
        evaluate(target, disk_sample(0, 3.0))
    finally:
        smtp.stop()

    assert len(smtp.messages) == 1
    sender, recipients, body = smtp.messages[0]
    assert sender == "llmcloud@localhost"
    assert recipients == ["ops@example.org"]
    assert "[FIRING] DiskLow" in body
    assert "Subject: llmcloud: 1 firing, 0 resolved" in body


def test_alerter_log_hides_webhook_url(
    tmp_path: Path, webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    target = alerter(tmp_path, alert_webhook_url=webhook.url, pending={})
    webhook.status = 500

    evaluate(target, disk_sample(0, 3.0))

    assert "HTTP 500" in caplog.text
    assert webhook.url not in caplog.text


@pytest.mark.parametrize("url", ["not a url", "ftp://example.org/hook", "https://"])
def test_settings_reject_invalid_webhook_url(url: str) -> None:
    from llmcloud.settings import ConfigError, load_settings

    with pytest.raises(ConfigError) as error:
        load_settings(alert_webhook_url=url)

    assert "alert_webhook_url" in str(error.value)
    assert "expected an http:// or https:// URL" in str(error.value)
    assert "= ***" in str(error.value)
