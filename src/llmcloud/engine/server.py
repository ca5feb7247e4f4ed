"""Start-up of the engine server: checks that must pass before it listens, then uvicorn."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import Any

import uvicorn

from llmcloud.engine.app import create_app
from llmcloud.settings import Settings
from llmcloud.tls.errors import CertificateError
from llmcloud.tls.serving import engine_certificate

logger = logging.getLogger("llmcloud.engine")


class StartupError(Exception):
    """A reason the engine cannot start, worded for the operator."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use; is another engine or Ollama running? "
                "Stop it or pick another port with --port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> None:
    """Run the engine until interrupted."""
    check_startup(settings)
    try:
        certificate = engine_certificate(settings)
    except CertificateError as exc:
        raise StartupError(exc.message) from None
    sock = bind_socket(settings.engine_host, settings.engine_port)
    logger.info(
        "engine listening on %s://%s:%s (data dir %s)",
        "https" if certificate else "http",
        settings.engine_host,
        sock.getsockname()[1],
        settings.data_dir,
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
