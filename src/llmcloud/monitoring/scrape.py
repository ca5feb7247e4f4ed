"""Scraping the SOCKS proxy's /metrics, so that the web app's samples include its totals.

The proxy runs in its own process (`llmcloud socks serve`), so its counters
are not in the web app's registry. When monitoring_socks_metrics_url is set,
each sample also reads that URL and keeps the `llmcloud_socks_*` series. The
proxy's other series (HTTP requests, disk, process) are left out, because
the web app's own reading already has them for itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmcloud.monitoring.samples import Reading
from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.monitoring")

SCRAPE_TIMEOUT_SECONDS = 5.0
SOCKS_PREFIX = "llmcloud_socks_"


class SocksScraper:
    """Reads the SOCKS proxy's series; a failed scrape returns no series and logs once."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._failing = False

    def __call__(self) -> Reading:
        try:
            response = httpx.get(self.url, headers=self.headers, timeout=SCRAPE_TIMEOUT_SECONDS)
            response.raise_for_status()
            reading = parse_exposition(response.text, SOCKS_PREFIX)
        except (httpx.HTTPError, ValueError) as exc:
            self._report_failure(exc)
            return {}
        if self._failing:
            logger.info("scraping the SOCKS proxy's metrics at %s works again", self.url)
            self._failing = False
        return reading

    def _report_failure(self, exc: Exception) -> None:
        # Logged when the scrape starts failing, not at every sample, so a stopped proxy
        # does not fill the log; samples then have no SOCKS rate at all.
        if not self._failing:
            logger.warning(
                "scraping the SOCKS proxy's metrics at %s failed: %s; the SocksDeniedSpike "
                "alert is not evaluated until it works again (check monitoring_socks_metrics_url "
                "and that `llmcloud socks serve` runs with socks_metrics_port)",
                self.url,
                exc,
            )
        self._failing = True


def parse_exposition(text: str, prefix: str) -> Reading:
    """Return the samples of the Prometheus text exposition whose names start with `prefix`.

    Raises ValueError when the text does not parse.
    """
    reading: Reading = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                key = (sample.name, tuple(sorted(sample.labels.items())))
                reading[key] = sample.value
    return reading


def socks_scraper(settings: Settings) -> Callable[[], Reading] | None:
    """Return the scraper for monitoring_socks_metrics_url, or None when it is unset."""
    if settings.monitoring_socks_metrics_url is None:
        return None
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    return SocksScraper(settings.monitoring_socks_metrics_url, token)
