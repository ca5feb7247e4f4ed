"""The web app's ASGI application: the chat pages, accounts pages and health checks.

`create_app()` builds it. At start-up it opens the database, migrates it
to the newest schema and checks that it accepts writes, and starts a gateway
to the model backends, unless the caller passes its own (tests pass both).
Routers live in their own modules and are listed in ROUTERS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

from argon2 import PasswordHasher
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from llmcloud import __version__
from llmcloud.auth.passwords import DEFAULT_HASHER
from llmcloud.auth.sessions import SessionPolicy
from llmcloud.backup.restore import check_data_dir_at_start
from llmcloud.backup.schedule import start_backup_scheduler
from llmcloud.backup.targets import targets_from_settings
from llmcloud.db import Database, database_url_from_settings, open_database
from llmcloud.deploy.shared_keys import session_key
from llmcloud.deploy.upgrade import migrate_with_backup
from llmcloud.gateway import Gateway
from llmcloud.instance import load_or_create_instance
from llmcloud.monitoring import status_page
from llmcloud.monitoring.endpoint import metrics_router
from llmcloud.monitoring.http_metrics import HttpMetricsMiddleware
from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.settings import Settings
from llmcloud.web import (
    acme_challenge,
    admin_backends,
    admin_pages,
    api_keys_pages,
    auth_pages,
    chat_pages,
    chat_ws,
    health,
    live_ws,
    oauth_pages,
    proxy_pac,
)
from llmcloud.web.answer_claims import answer_claims_for
from llmcloud.web.deps import WebState
from llmcloud.web.errors import UnexpectedErrorMiddleware, add_error_handlers
from llmcloud.web.live import live_feed_for
from llmcloud.web.middleware import (
    AccessLogMiddleware,
    BodySizeLimitMiddleware,
    SecurityHeadersMiddleware,
)
from llmcloud.web.openai_api import OpenAIAPI, is_api_path
from llmcloud.web.rate_limit import login_limiters_for, rate_limiter_for
from llmcloud.web.security import CookieSigner
from llmcloud.web.templating import STATIC_DIR

log = logging.getLogger("llmcloud.web")

# Every router of the web app. The /v1 API is not among them: WebApp sends it to OpenAIAPI.
ROUTERS: list[APIRouter] = [
    health.router,
    auth_pages.router,
    oauth_pages.router,
    chat_pages.router,
    chat_ws.router,
    live_ws.router,
    api_keys_pages.router,
    admin_pages.router,
    admin_backends.router,
    status_page.router,
    acme_challenge.router,
    proxy_pac.router,
]


def create_app(
    settings: Settings,
    *,
    gateway: Gateway | None = None,
    database: Database | None = None,
    hasher: PasswordHasher | None = None,
    schedule_backups: bool | None = None,
) -> WebApp:
    """Build the web app.

    A `gateway` or `database` passed in belongs to the caller, who starts and
    closes it; the app opens and closes the ones it creates itself. The app
    runs the backup scheduler when `schedule_backups` is true, and by default
    when it opens its own database. `hasher` replaces the argon2 parameters,
    which tests make cheap.
    """
    if schedule_backups is None:
        schedule_backups = database is None
    key = session_key(settings)
    state = WebState(
        settings=settings,
        signer=CookieSigner(key),
        policy=SessionPolicy.from_settings(settings),
        hasher=hasher or DEFAULT_HASHER,
        database=database,
        gateway=gateway,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if database is None:
                state.database = await asyncio.to_thread(_open_database, settings)
                stack.callback(state.database.dispose)
            if schedule_backups:
                backups = start_backup_scheduler(settings)
                if backups is not None:
                    stack.callback(backups.shutdown, wait=False)
            if gateway is None:
                state.gateway = Gateway.from_settings(settings)
                await state.gateway.start()
                stack.push_async_callback(state.gateway.close)
            stack.push_async_callback(app.state.live.close)
            stack.push_async_callback(app.state.rate_limiter.close)
            stack.push_async_callback(app.state.answer_claims.close)
            stack.push_async_callback(app.state.login_limiters.close)
            log.info("web app started (llmcloud %s)", __version__)
            yield
        log.info("web app stopped")

    app = WebApp(
        api_app(settings),
        title="llmcloud",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.web = state
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    app.state.live = live_feed_for(redis_url)
    app.state.rate_limiter = rate_limiter_for(settings.web_chat_rate_limit, redis_url)
    app.state.answer_claims = answer_claims_for(redis_url)
    app.state.login_limiters = login_limiters_for(settings.web_login_rate_limit, redis_url)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes(settings))
    app.add_middleware(AccessLogMiddleware)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.add_middleware(HttpMetricsMiddleware, app_name="web")
    add_error_handlers(app)
    app.state.metrics = AppRegistry()
    app.include_router(metrics_router(settings, app.state.metrics))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Browsers request /favicon.ico on every page that links no icon, such as JSON responses.
    app.add_api_route("/favicon.ico", _favicon, include_in_schema=False)
    for router in ROUTERS:
        app.include_router(router)
    return app


def api_app(settings: Settings) -> ASGIApp:
    """Return OpenAIAPI, behind the handling of X-Forwarded-* when trusted_proxies names any."""
    # uvicorn types its middleware with ASGI types of its own, which Starlette's do not match.
    api: Any = OpenAIAPI()
    if not settings.trusted_proxies:
        return cast(ASGIApp, api)
    proxied: Any = ProxyHeadersMiddleware(api, trusted_hosts=settings.trusted_proxies)
    return cast(ASGIApp, proxied)


class WebApp(FastAPI):
    """The web app: `api` serves /v1 (OpenAIAPI), and FastAPI with its middleware the rest.

    The /v1 requests skip Starlette's middleware stack and FastAPI's router, which
    OpenAIAPI replaces with a layer of its own.
    """

    def __init__(self, api: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_api_path(scope["path"]):
            scope["app"] = self
            await self.api(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _favicon() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "favicon.ico",
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )


def max_body_bytes(settings: Settings) -> int:
    """Return the largest request body: an import file plus room for the multipart framing."""
    return settings.web_max_import_bytes + 64 * 1024


def prepare_data_dir(settings: Settings) -> None:
    """Check that an empty data dir has no backups on a target, then write instance.json.

    Raises BackupError when the data dir is empty but a backup target stores
    backups, so that a lost data dir never silently becomes a new instance.
    """
    check_data_dir_at_start(settings, targets_from_settings(settings))
    load_or_create_instance(settings.data_dir)


def _open_database(settings: Settings) -> Database:
    prepare_data_dir(settings)
    database = open_database(database_url_from_settings(settings))
    try:
        # Backs up and migrates under the deployment-wide backup lock, so that instances
        # starting at once take one backup and run the migration once.
        migrate_with_backup(settings, database)
        database.check_writable()
    except BaseException:
        database.dispose()
        raise
    return database
