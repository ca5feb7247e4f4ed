"""The engine's ASGI application: routes, Bearer-token check, error bodies, access log."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmcloud import __version__
from llmcloud.engine import model_routes, ollama_api, openai_api
from llmcloud.engine.bundled import ensure_bundled_model
from llmcloud.engine.errors import EngineError, InvalidRequest, Unauthorized
from llmcloud.engine.http import ollama_error, openai_error
from llmcloud.engine.scheduler import Scheduler
from llmcloud.engine.store import ModelStore
from llmcloud.logs import access_log_path
from llmcloud.monitoring import sources
from llmcloud.monitoring.endpoint import metrics_router
from llmcloud.monitoring.health import disk_problem
from llmcloud.monitoring.http_metrics import HttpMetricsMiddleware
from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.engine")
access_logger = logging.getLogger("llmcloud.access")

# The Ollama API level this engine implements, for clients that compare versions.
OLLAMA_API_VERSION = "0.12.0"

# /metrics checks its own token (metrics_token), so the engine token is not asked for there.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})

# Monitoring and the gateway's health checks repeat these requests every few seconds. Successful
# ones are logged at DEBUG, so that the access log at INFO shows what users do.
PROBE_PATHS = OPEN_PATHS | {"/api/tags", "/api/version", "/v1/models"}


def create_app(settings: Settings, store: ModelStore | None = None) -> FastAPI:
    store = store or ModelStore(settings.models_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        entry = await asyncio.to_thread(ensure_bundled_model, store)
        if entry is not None:
            logger.info("bundled model available as %s", entry.name.display)
        scheduler = Scheduler(settings, store)
        scheduler.start()
        app.state.scheduler = scheduler
        sources.watch_scheduler(app.state.metrics, scheduler)
        sources.watch_data_dir(app.state.metrics, settings.data_dir)
        try:
            yield
        finally:
            await scheduler.close()

    app = FastAPI(
        title="llmcloud engine",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = AppRegistry()
    app.add_middleware(BearerTokenMiddleware, settings=settings)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(HttpMetricsMiddleware, app_name="engine")
    _add_error_handlers(app)
    _add_root_routes(app)
    app.include_router(metrics_router(settings, app.state.metrics))
    app.include_router(ollama_api.router)
    app.include_router(model_routes.router)
    app.include_router(openai_api.router)
    return app


def _add_root_routes(app: FastAPI) -> None:
    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")

    @app.api_route("/api/version", methods=["GET", "HEAD"])
    async def version() -> JSONResponse:
        return JSONResponse({"version": OLLAMA_API_VERSION, "llmcloud": __version__})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        models = request.app.state.store.list()
        failed = {}
        if not models:
            failed["models"] = "no model in the store; run `llmcloud pull NAME`"
        problem = disk_problem(request.app.state.settings)
        if problem is not None:
            failed["disk"] = problem
        if failed:
            return JSONResponse({"status": "unavailable", "failed": failed}, 503)
        return JSONResponse({"status": "ok", "models": len(models)})


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _error_response(request: Request, exc: EngineError) -> Response:
    if exc.status_code >= 500 and not getattr(exc, "retry_after", None):
        logger.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
    return openai_error(exc) if _is_openai(request) else ollama_error(exc)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> Response:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            ".".join(str(part) for part in error["loc"]) + ": " + error["msg"]
            for error in exc.errors()
        )
        return _error_response(request, InvalidRequest(f"invalid request: {problems}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error = EngineError(_http_error_message(request, exc))
        error.status_code = exc.status_code
        response = _error_response(request, error)
        if exc.headers:
            response.headers.update(exc.headers)
        return response


def _http_error_message(request: Request, exc: HTTPException) -> str:
    if exc.status_code == 404:
        return f"no route for {request.method} {request.url.path}"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")
        use = f"; use {allowed}" if allowed else ""
        return f"method {request.method} is not allowed on {request.url.path}{use}"
    return str(exc.detail)


class BearerTokenMiddleware:
    """Requires `Authorization: Bearer <engine_token>` on every route but the health checks."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        token = settings.engine_token
        self.token = token.get_secret_value().encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token):
            await self.app(scope, receive, send)
            return
        error = Unauthorized("missing or invalid Bearer token; send Authorization: Bearer <token>")
        if scope["path"].startswith("/v1/"):
            response = openai_error(error)
        else:
            response = ollama_error(error)
        await response(scope, receive, send)


class AccessLogMiddleware:
    """Logs one line per request to `llmcloud.access`: method, path, status, duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 0}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            client = scope.get("client") or ("-", 0)
            probe = scope["path"] in PROBE_PATHS and 0 < status["code"] < 400
            access_logger.log(
                logging.DEBUG if probe else logging.INFO,
                '%s "%s %s" %s %.1fms',
                client[0],
                scope["method"],
                access_log_path(scope["path"]),
                status["code"],
                (time.perf_counter() - started) * 1000,
            )
