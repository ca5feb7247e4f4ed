"""Which certificate a server presents, and the loops that keep it fresh.

The web app serves, in this order of preference: the operator's own files
(tls_cert_file and tls_key_file), or the ACME-managed certificate for
tls_acme_domains. Until the first ACME certificate arrives, a stand-in from
the internal CA fills its place, so HTTPS and the challenge responses work
from the first start; the renewal loop replaces it at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from llmcloud.settings import Settings
from llmcloud.tls.asgi import ProxyHeadersMiddleware, redirect_app
from llmcloud.tls.ca import CAPaths, init_ca, issue_certificate
from llmcloud.tls.certificates import load_pair, utcnow
from llmcloud.tls.context import ReloadingCertificate
from llmcloud.tls.errors import CertificateError, ListenError
from llmcloud.tls.renewal import RenewalLoop, lifetime_due

log = logging.getLogger("llmcloud.tls")


@dataclass(frozen=True)
class CertificateFiles:
    cert: Path
    key: Path


def acme_files(data_dir: Path, domains: list[str]) -> CertificateFiles:
    """Return where the ACME certificate for `domains` is stored: named for the first domain."""
    name = domains[0]
    return CertificateFiles(
        cert=data_dir / "certs" / "acme" / f"{name}.pem",
        key=data_dir / "secrets" / "acme" / f"{name}-key.pem",
    )


def web_certificate_files(settings: Settings) -> CertificateFiles | None:
    """Return the files the web app serves, or None for plain HTTP."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        given = "tls_cert_file" if cert is not None else "tls_key_file"
        missing = "tls_key_file" if cert is not None else "tls_cert_file"
        raise CertificateError(f"{given} is set but {missing} is not; set both or neither")
    if cert is not None and key is not None:
        return CertificateFiles(cert, key)
    if settings.tls_acme_domains:
        return acme_files(settings.data_dir, settings.tls_acme_domains)
    return None


def ensure_stand_in(settings: Settings, files: CertificateFiles) -> None:
    """Write an internal-CA certificate at the ACME paths if no certificate is there yet."""
    if files.cert.exists() and files.key.exists():
        return
    ca = CAPaths(settings.data_dir)
    if not ca.cert.exists():
        init_ca(settings.data_dir, settings.tls_ca_lifetime_days)
    pair = issue_certificate(
        settings.data_dir, "acme-stand-in", settings.tls_acme_domains, lifetime_days=7
    )
    files.key.parent.mkdir(parents=True, exist_ok=True)
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    pair.key_path.replace(files.key)
    pair.cert_path.replace(files.cert)
    log.info("serving a stand-in certificate from the internal CA until ACME issues one")


class RedirectServer:
    """The plain-HTTP port: ACME challenges and redirects to HTTPS, run in its own thread."""

    def __init__(self, settings: Settings) -> None:
        assert settings.tls_http_port is not None
        host, port = settings.web_host, settings.tls_http_port
        try:
            self.sock = socket.create_server((host.strip("[]"), port), backlog=128)
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {host}:{port} for the HTTP redirect (setting tls_http_port): "
                f"{exc.strerror}"
            ) from None
        app = redirect_app(settings.data_dir, settings.web_port, settings.public_url)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        log.info("HTTP redirect and ACME challenges on port %s", self.sock.getsockname()[1])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class WebTLS:
    """The web app's reloading certificate, its ACME renewal loop and its redirect port."""

    certificate: ReloadingCertificate
    renewal: RenewalLoop | None = None
    redirect: RedirectServer | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        context = self.certificate.context
        return {"ssl_context_factory": lambda config, default: context}

    def start(self) -> None:
        self.certificate.start()
        if self.redirect is not None:
            self.redirect.start()
        if self.renewal is not None:
            self.renewal.start()

    def stop(self) -> None:
        if self.renewal is not None:
            self.renewal.stop()
        if self.redirect is not None:
            self.redirect.stop()
        self.certificate.stop()


def https_for(settings: Settings) -> WebTLS | None:
    """Prepare the web app's HTTPS from the settings, or return None for plain HTTP.

    Raises CertificateError for unusable files and ListenError for a busy redirect port.
    """
    files = web_certificate_files(settings)
    if files is None:
        return None
    if settings.tls_cert_file is None:
        ensure_stand_in(settings, files)
    certificate = ReloadingCertificate(
        files.cert,
        files.key,
        served_at=f"web:{settings.web_port}",
        poll_seconds=settings.tls_reload_seconds,
    )
    renewal = None
    if settings.tls_cert_file is None:
        renewal = RenewalLoop.from_settings(settings, files.cert, files.key)
    redirect = RedirectServer(settings) if settings.tls_http_port else None
    return WebTLS(certificate, renewal, redirect)


def wrap_for_https(app: ASGIApp, settings: Settings) -> ASGIApp:
    """Add HSTS (for an https public URL) and the streaming header for nginx."""
    hsts = bool(settings.public_url and settings.public_url.startswith("https://"))
    return ProxyHeadersMiddleware(app, hsts=hsts)


def engine_certificate(settings: Settings) -> ReloadingCertificate | None:
    """Return the engine's reloading certificate, or None when the engine serves plain HTTP."""
    cert, key = settings.tls_engine_cert_file, settings.tls_engine_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given = "tls_engine_cert_file" if cert is not None else "tls_engine_key_file"
        missing = "tls_engine_key_file" if cert is not None else "tls_engine_cert_file"
        raise CertificateError(f"{given} is set but {missing} is not; set both or neither")
    return ReloadingCertificate(
        cert,
        key,
        served_at=f"engine:{settings.engine_port}",
        poll_seconds=settings.tls_reload_seconds,
    )


LOCALHOST_NAMES = ["localhost", "127.0.0.1", "::1"]


def localhost_certificate(settings: Settings) -> CertificateFiles:
    """Return the internal-CA certificate for localhost that `llmcloud up` serves.

    Creates the CA if there is none, and issues the certificate when it is
    missing, unreadable, or has a third of its lifetime left.
    """
    ca = CAPaths(settings.data_dir)
    if not ca.cert.exists():
        init_ca(settings.data_dir, settings.tls_ca_lifetime_days)
    files = CertificateFiles(ca.issued_cert("localhost"), ca.issued_key("localhost"))
    try:
        pair = load_pair(files.cert, files.key)
        if utcnow() < lifetime_due(pair.leaf):
            return files
    except CertificateError as exc:
        if files.cert.exists():
            log.warning("replacing the localhost certificate: %s", exc.message)
    # NOTE: checked at each start of `llmcloud up` only; a run longer than two thirds of
    # tls_cert_lifetime_days serves the certificate until it expires.
    issue_certificate(
        settings.data_dir, "localhost", LOCALHOST_NAMES, settings.tls_cert_lifetime_days
    )
    return files
