"""The background task of `llmcloud web` that samples the metrics and runs the alerter."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from llmcloud.monitoring.alerter import Alerter
from llmcloud.monitoring.metrics import REGISTRY
from llmcloud.monitoring.samples import Sampler
from llmcloud.monitoring.scrape import socks_scraper
from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.monitoring")


class Monitor:
    """Takes a sample every `monitoring_sample_interval` seconds and hands it to the alerter."""

    def __init__(self, settings: Settings, registry: CollectorRegistry = REGISTRY) -> None:
        scraper = socks_scraper(settings)
        self.sampler = Sampler(
            settings.monitoring_sample_interval,
            settings.monitoring_history_hours * 3600,
            registry,
            scrapes=[scraper] if scraper is not None else None,
        )
        self.alerter = Alerter(settings)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="monitoring-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.alerter.close()

    async def tick(self) -> None:
        sample = await asyncio.to_thread(self.sampler.take)
        await self.alerter.evaluate(sample)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad sample must not stop monitoring
                logger.exception("taking a monitoring sample failed")
            await asyncio.sleep(self.sampler.interval)
