"""A small HTTP app with /metrics, /healthz and /readyz, for processes that serve no HTTP.

The SOCKS proxy speaks only SOCKS5 on its own port, so it runs this app on
`socks_metrics_port` beside it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from llmcloud.monitoring.endpoint import metrics_router
from llmcloud.monitoring.health import disk_problem
from llmcloud.monitoring.http_metrics import HttpMetricsMiddleware
from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.settings import Settings


def create_metrics_app(settings: Settings, app_name: str) -> FastAPI:
    """Create the app; its `state.metrics` is the AppRegistry that the caller binds sources in."""
    app = FastAPI(
        title=f"llmcloud {app_name} metrics", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.add_middleware(HttpMetricsMiddleware, app_name=app_name)
    app.state.metrics = AppRegistry()
    app.include_router(metrics_router(settings, app.state.metrics))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problem = disk_problem(settings)
        if problem is not None:
            return JSONResponse({"status": "unavailable", "failed": {"disk": problem}}, 503)
        return JSONResponse({"status": "ok"})

    return app
