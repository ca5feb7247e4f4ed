"""The built-in alerter sees a spike of denied destinations in a real SOCKS proxy process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llmcloud.cli.up import socks_metrics_env
from llmcloud.monitoring.alerter import Alerter
from llmcloud.monitoring.monitor import Monitor
from llmcloud.monitoring.samples import Sampler
from llmcloud.monitoring.scrape import SocksScraper, parse_exposition, socks_scraper
from llmcloud.settings import Settings
from tests.monitoring.receivers import WebhookReceiver
from tests.monitoring.test_socks_metrics import free_port, wait_for

DENIED_CONNECTS = 10
SAMPLE_SECONDS = 15.0


@pytest.fixture
def socks_metrics_url(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """Run `llmcloud socks serve` with no allowed destination; yield its port and /metrics URL."""
    socks_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LLMCLOUD_DATA_DIR": str(tmp_path / "socks-data"),
        "LLMCLOUD_SOCKS_HOST": "127.0.0.1",
        "LLMCLOUD_SOCKS_PORT": str(socks_port),
        "LLMCLOUD_SOCKS_METRICS_PORT": str(metrics_port),
        "LLMCLOUD_SOCKS_ALLOW_NO_AUTH": "true",
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "llmcloud"), "socks", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        wait_for(f"{base}/healthz")
        yield socks_port, f"{base}/metrics"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def connect_denied(socks_port: int) -> int:
    """Ask the proxy to CONNECT to 127.0.0.2:9, which no rule allows; return the reply code."""
    with socket.create_connection(("127.0.0.1", socks_port), timeout=10) as client:
        client.sendall(b"\x05\x01\x00")  # offers only "no authentication"
        client.recv(2)
        client.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.2") + struct.pack("!H", 9))
        reply = client.recv(10)
    return reply[1]


def wait_for_denied_total(url: str, expected: int) -> None:
    """Wait until the proxy counts `expected` denials; it counts one when the connection ends."""
    deadline = time.monotonic() + 30
    name = "llmcloud_socks_denied_destinations_total"
    while True:
        reading = parse_exposition(httpx.get(url, timeout=5).text, name)
        if sum(reading.values()) >= expected or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def test_denied_spike_fires_webhook(
    tmp_path: Path, socks_metrics_url: tuple[int, str], webhook: WebhookReceiver
) -> None:
    socks_port, url = socks_metrics_url
    settings = Settings(
        data_dir=tmp_path / "web-data",
        monitoring_socks_metrics_url=url,
        alert_webhook_url=webhook.url,
    )
    scraper = socks_scraper(settings)
    assert scraper is not None
    sampler = Sampler(SAMPLE_SECONDS, 3600, CollectorRegistry(), scrapes=[scraper])
    alerter = Alerter(settings)

    quiet = sampler.take(now=1000.0)
    asyncio.run(alerter.evaluate(quiet))
    replies = [connect_denied(socks_port) for _ in range(DENIED_CONNECTS)]
    wait_for_denied_total(url, DENIED_CONNECTS)
    spike = sampler.take(now=1000.0 + SAMPLE_SECONDS)
    asyncio.run(alerter.evaluate(spike))
    asyncio.run(alerter.close())

    assert replies == [0x02] * DENIED_CONNECTS  # "connection not allowed by ruleset"
    assert quiet.socks_denied_per_second is None
    assert spike.socks_denied_per_second == DENIED_CONNECTS / SAMPLE_SECONDS
    texts = webhook.texts()
    assert len(texts) == 1
    assert "[FIRING] SocksDeniedSpike" in texts[0]


def test_quiet_proxy_raises_no_alert(
    tmp_path: Path, socks_metrics_url: tuple[int, str], webhook: WebhookReceiver
) -> None:
    _, url = socks_metrics_url
    settings = Settings(
        data_dir=tmp_path / "web-data",
        monitoring_socks_metrics_url=url,
        alert_webhook_url=webhook.url,
    )
    monitor = Monitor(settings, CollectorRegistry())

    first = monitor.sampler.take(now=1000.0)
    second = monitor.sampler.take(now=1000.0 + SAMPLE_SECONDS)
    asyncio.run(monitor.alerter.evaluate(second))
    asyncio.run(monitor.alerter.close())

    assert first.socks_denied_per_second is None
    assert second.socks_denied_per_second == 0.0
    assert webhook.texts() == []


def test_unreachable_proxy_gives_no_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llmcloud.monitoring")
    url = f"http://127.0.0.1:{free_port()}/metrics"
    sampler = Sampler(SAMPLE_SECONDS, 3600, CollectorRegistry(), scrapes=[SocksScraper(url)])

    sampler.take(now=1000.0)
    sample = sampler.take(now=1000.0 + SAMPLE_SECONDS)

    assert sample.socks_denied_per_second is None
    assert caplog.text.count("scraping the SOCKS proxy's metrics") == 1
    assert url in caplog.text


def test_scrape_gap_is_not_a_spike(socks_metrics_url: tuple[int, str]) -> None:
    socks_port, url = socks_metrics_url
    scraper = SocksScraper(url)
    sampler = Sampler(SAMPLE_SECONDS, 3600, CollectorRegistry(), scrapes=[scraper])
    sampler.take(now=1000.0)
    for _ in range(DENIED_CONNECTS):
        connect_denied(socks_port)

    scraper.url = f"http://127.0.0.1:{free_port()}/metrics"
    gap = sampler.take(now=1015.0)
    scraper.url = url
    after_gap = sampler.take(now=1030.0)

    assert gap.socks_denied_per_second is None
    assert after_gap.socks_denied_per_second is None


def test_invalid_socks_metrics_url_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid monitoring_socks_metrics_url 'localhost:9108'"):
        Settings(data_dir=tmp_path, monitoring_socks_metrics_url="localhost:9108")


def test_up_points_web_at_socks_metrics(tmp_path: Path) -> None:
    with_port = Settings(data_dir=tmp_path, socks_host="0.0.0.0", socks_metrics_port=9108)
    without_port = Settings(data_dir=tmp_path)

    assert socks_metrics_env(with_port) == {
        "LLMCLOUD_MONITORING_SOCKS_METRICS_URL": "http://127.0.0.1:9108/metrics"
    }
    assert socks_metrics_env(without_port) == {}
