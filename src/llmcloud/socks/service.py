"""Running the SOCKS proxy from the settings, as `llmcloud socks serve` does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from llmcloud.db.database import database_url_from_settings, open_database
from llmcloud.monitoring import sources
from llmcloud.monitoring.metrics_app import create_metrics_app
from llmcloud.settings import Settings
from llmcloud.socks.acl import AllowList
from llmcloud.socks.auth import AccountAuthenticator
from llmcloud.socks.server import ProxyConfig, SocksServer

log = logging.getLogger("llmcloud.socks")
SHUTDOWN_GRACE_SECONDS = 5.0


def config_from_settings(settings: Settings) -> ProxyConfig:
    return ProxyConfig(
        host=settings.socks_host,
        port=settings.socks_port,
        allow_list=AllowList.parse(settings.socks_allow),
        allow_no_auth=settings.socks_allow_no_auth,
        max_connections=settings.socks_max_connections,
        max_tunnels_per_user=settings.socks_max_tunnels_per_user,
        handshake_timeout=settings.socks_handshake_timeout,
        connect_timeout=settings.socks_connect_timeout,
        idle_timeout=settings.socks_idle_timeout,
        max_login_failures=settings.socks_max_login_failures,
        login_failure_window=settings.socks_login_failure_window,
    )


def serve(settings: Settings) -> None:
    """Run the proxy until SIGINT or SIGTERM, then close it cleanly."""
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    config = config_from_settings(settings)
    if not config.allow_list.rules:
        log.warning("socks_allow is empty, so the SOCKS proxy allows no destination")
    database = await asyncio.to_thread(open_database, database_url_from_settings(settings))
    try:
        authenticator = AccountAuthenticator(
            database, settings.socks_roles, cache_seconds=settings.socks_login_cache_seconds
        )
        server = SocksServer(config, authenticator)
        await server.start()
        metrics = _start_metrics(settings, server)
        await _wait_for_stop_signal()
        log.info("stop signal received; closing the SOCKS proxy")
        if metrics is not None:
            metrics[0].should_exit = True
            await metrics[1]
        await server.close(SHUTDOWN_GRACE_SECONDS)
    finally:
        database.dispose()


def _start_metrics(
    settings: Settings, server: SocksServer
) -> tuple[uvicorn.Server, asyncio.Task[None]] | None:
    """Serve /metrics, /healthz and /readyz on socks_metrics_port, when it is set."""
    if settings.socks_metrics_port is None:
        return None
    app = create_metrics_app(settings, "socks")
    sources.watch_socks(app.state.metrics, server.stats)
    sources.watch_data_dir(app.state.metrics, settings.data_dir)
    config = uvicorn.Config(
        app, host=settings.socks_host, port=settings.socks_metrics_port, log_config=None
    )
    metrics_server = uvicorn.Server(config)
    # The proxy's own handlers stop both servers; uvicorn's would replace them.
    metrics_server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(metrics_server.serve(), name="socks-metrics")
    log.info("SOCKS metrics on %s:%s", settings.socks_host, settings.socks_metrics_port)
    return metrics_server, task


async def _wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await stop.wait()
    finally:
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signal_number)
