"""Start-up of the engine server: checks that must pass before it listens, then uvicorn."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from llmcloud.cpu import move_process_to_idle_class
from llmcloud.engine.app import create_app
from llmcloud.listen import ListenError, bind_socket, is_loopback
from llmcloud.settings import Settings
from llmcloud.tls.errors import CertificateError
from llmcloud.tls.serving import engine_certificate

logger = logging.getLogger("llmcloud.engine")


class StartupError(Exception):
    """A reason the engine cannot start, worded for the operator."""


def check_startup(settings: Settings) -> None:
    if not is_loopback(settings.engine_host) and settings.engine_token is None:
        raise StartupError(
            f"engine_host {settings.engine_host!r} is not a loopback address, so the engine "
            "needs a Bearer token: set LLMCLOUD_ENGINE_TOKEN (or engine_token in the config file)"
        )
    try:
        settings.models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the model store {settings.models_dir}: {exc}") from None


def serve(settings: Settings) -> None:
    """Run the engine until interrupted."""
    check_startup(settings)
    try:
        certificate = engine_certificate(settings)
    except CertificateError as exc:
        raise StartupError(exc.message) from None
    try:
        sock = bind_socket(settings.engine_host, settings.engine_port, setting="engine_port")
    except ListenError as exc:
        raise StartupError(str(exc)) from None
    logger.info(
        "engine listening on %s://%s:%s (data dir %s)",
        "https" if certificate else "http",
        settings.engine_host,
        sock.getsockname()[1],
        settings.data_dir,
    )
    if settings.engine_background and not move_process_to_idle_class():
        logger.warning(
            "engine_background is on, but this system has no idle scheduling class "
            "(SCHED_IDLE), so the engine runs at normal priority; set engine_background to "
            "false to drop this warning"
        )
    tls_options: dict[str, Any] = {}
    if certificate is not None:
        context = certificate.start().context
        tls_options["ssl_context_factory"] = lambda config, default: context
    config = uvicorn.Config(
        create_app(settings),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        **tls_options,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if certificate is not None:
            certificate.stop()
