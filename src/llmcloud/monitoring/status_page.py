"""The admin page of charts over the last hours, from the web app's own samples.

The router's lifespan starts the sampler and the built-in alerter inside the
web app, and points the sourced metrics at the app's gateway, database,
certificates and backup status. The page reads the sampler's ring buffer, so
it works without Prometheus; `/admin/charts.json` returns the same samples.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from llmcloud.monitoring import sources
from llmcloud.monitoring.charts import HEIGHT, WIDTH, Chart, line_chart
from llmcloud.monitoring.monitor import Monitor
from llmcloud.monitoring.samples import Sample
from llmcloud.web.deps import AdminUser
from llmcloud.web.templating import TEMPLATES_DIR, nav_links
from llmcloud.web.templating import templates as web_templates

templates = Jinja2Templates(
    env=web_templates.env.overlay(
        loader=ChoiceLoader(
            [FileSystemLoader(Path(__file__).parent / "templates"), FileSystemLoader(TEMPLATES_DIR)]
        )
    )
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state.web
    registry = app.state.metrics
    sources.watch_gateway(registry, state.models)
    sources.watch_accounts(registry, lambda: state.database)
    sources.watch_certificates(registry)
    sources.watch_backups(registry, state.settings)
    sources.watch_data_dir(registry, state.settings.data_dir)
    monitor = Monitor(state.settings, registry)
    monitor.start()
    app.state.monitor = monitor
    try:
        yield
    finally:
        await monitor.close()


router = APIRouter(lifespan=lifespan)


@router.get("/admin/charts", response_class=HTMLResponse)
async def charts_page(request: Request, active: AdminUser) -> Response:
    samples = list(_monitor(request).sampler.samples)
    context: dict[str, Any] = {
        "active": active,
        "user": active.user,
        "csrf_token": active.csrf_token,
        "nav_links": nav_links(active),
        "path": request.url.path,
        "charts": build_charts(samples),
        "latest": samples[-1] if samples else None,
        "width": WIDTH,
        "height": HEIGHT,
        "alerts": sorted(_monitor(request).alerter.active.items()),
        "now": time.time(),
    }
    return templates.TemplateResponse(request, "charts.html", context)


@router.get("/admin/charts.json")
async def charts_json(request: Request, active: AdminUser) -> JSONResponse:
    samples = [dataclasses.asdict(sample) for sample in _monitor(request).sampler.samples]
    return JSONResponse({"samples": samples})


def build_charts(samples: list[Sample]) -> list[Chart]:
    times = [sample.time for sample in samples]

    def chart(title: str, unit: str, values: list[float | None]) -> Chart:
        return line_chart(title, unit, times, values)

    return [
        chart("Requests", "per second", [sample.requests_per_second for sample in samples]),
        chart("Errors (5xx)", "per second", [sample.errors_per_second for sample in samples]),
        chart("Time to first token, p95", "seconds", [s.ttft_p95_seconds for s in samples]),
        chart("Tokens generated", "per second", [s.tokens_per_second for s in samples]),
        chart("Queue", "requests waiting", [sample.queue_waiting for sample in samples]),
        chart("Queue rejections", "per sample", [s.queue_rejections for s in samples]),
        chart(
            "Backends up",
            "backends",
            [float(sum(sample.backends_up.values())) for sample in samples],
        ),
        chart("Disk free", "percent", [sample.disk_free_percent for sample in samples]),
    ]


def _monitor(request: Request) -> Monitor:
    monitor: Monitor = request.app.state.monitor
    return monitor
