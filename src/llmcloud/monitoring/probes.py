"""Probes of a running deployment from outside, for `llmcloud check`.

Each probe returns a `ProbeResult` with a status (ok, warning, critical) and
one line of detail. Probes only read: the login page, the database check of
/readyz, a one-token generation per backend, /metrics for backup and disk
figures, a TLS handshake for the certificate, and a SOCKS greeting when
socks_allow lists destinations. Exit codes follow the Nagios plugin
convention: 0 ok, 1 warning, 2 critical.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from llmcloud.gateway import Backend, default_backends
from llmcloud.settings import Settings
from llmcloud.tls.ca import CAPaths

TIMEOUT_SECONDS = 10.0
CERT_WARNING_DAYS = 14
CERT_CRITICAL_DAYS = 7
RESTORE_WARNING_DAYS = 7
RESTORE_CRITICAL_DAYS = 14
DISK_WARNING_PERCENT = 10.0
DISK_CRITICAL_PERCENT = 5.0


class Status(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: Status
    detail: str


def web_url(settings: Settings) -> str:
    """Return public_url, else web_host:web_port with the scheme that the server speaks there.

    `llmcloud up` serves HTTPS with a certificate from the internal CA although no
    TLS setting is set, so the scheme comes from a TLS handshake, not the settings.
    """
    if settings.public_url:
        return settings.public_url
    scheme = "https" if serves_tls(settings.web_host, settings.web_port) else "http"
    return f"{scheme}://{settings.web_host}:{settings.web_port}"


def serves_tls(host: str, port: int) -> bool:
    """Return whether a TLS handshake with host:port succeeds; False on any failure."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only the protocol matters here
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except OSError:  # ssl.SSLError included: a plain HTTP server rejects the handshake
        return False


def default_verify(settings: Settings) -> bool | str:
    """Return the internal CA's certificate file when the web app serves one it issued, else True.

    Without public_url or a certificate of its own or from ACME, the web app
    (as `llmcloud up` starts it) serves a certificate from the internal CA.
    """
    if settings.public_url or settings.tls_cert_file or settings.tls_acme_domains:
        return True
    ca_cert = CAPaths(settings.data_dir).cert
    return str(ca_cert) if ca_cert.exists() else True


def run_probes(
    settings: Settings, url: str | None = None, *, verify: bool | str = True
) -> list[ProbeResult]:
    """Run every probe against the deployment at `url` (default: public_url or web_host).

    `verify` is httpx's TLS verification: True for the system's CAs, a CA
    bundle path (such as llmcloud's internal CA), or False to skip it.
    """
    base = (url or web_url(settings)).rstrip("/")
    results = [probe_login_page(base, verify), probe_database(base, verify)]
    if urlsplit(base).scheme == "https":
        results.append(probe_certificate(base))
    results.extend(probe_backend(backend) for backend in backends_of(settings))
    results.extend(probe_metrics(base, settings, verify))
    # A proxy with an empty allow list reaches nothing, and `llmcloud up` starts none.
    if settings.socks_allow:
        results.append(probe_socks(settings.socks_host, settings.socks_port))
    return results


def backends_of(settings: Settings) -> list[Backend]:
    configured = settings.gateway_backends or default_backends(settings)
    return [backend for backend in configured if backend.enabled]


def worst(results: list[ProbeResult]) -> Status:
    return max((result.status for result in results), default=Status.OK)


def _guard(name: str, probe: Callable[[], ProbeResult]) -> ProbeResult:
    try:
        return probe()
    except (httpx.HTTPError, OSError, ssl.SSLError, ValueError) as exc:
        return ProbeResult(name, Status.CRITICAL, f"failed: {type(exc).__name__}: {exc}")


def probe_login_page(base: str, verify: bool | str = True) -> ProbeResult:
    def probe() -> ProbeResult:
        response = httpx.get(f"{base}/login", timeout=TIMEOUT_SECONDS, verify=verify)
        if response.status_code != 200 or "<form" not in response.text:
            return ProbeResult("login page", Status.CRITICAL, f"HTTP {response.status_code}")
        return ProbeResult(
            "login page", Status.OK, f"served in {response.elapsed.total_seconds():.2f} s"
        )

    return _guard("login page", probe)


def probe_database(base: str, verify: bool | str = True) -> ProbeResult:
    """Report the database part of the web app's /readyz: reachable and accepting writes.

    The web app runs the check itself, so this probe needs no database
    credentials. A 503 from /readyz for another reason (no healthy backend,
    a full disk) leaves the database ok, because other probes report those.
    """

    def probe() -> ProbeResult:
        response = httpx.get(f"{base}/readyz", timeout=TIMEOUT_SECONDS, verify=verify)
        if response.status_code not in (200, 503):
            return ProbeResult("database", Status.CRITICAL, f"/readyz: HTTP {response.status_code}")
        body = response.json()
        failed = body.get("failed") if isinstance(body, dict) else None
        problem = failed.get("database") if isinstance(failed, dict) else None
        if problem:
            return ProbeResult("database", Status.CRITICAL, str(problem))
        return ProbeResult("database", Status.OK, "reachable and accepts writes")

    return _guard("database", probe)


def probe_certificate(base: str) -> ProbeResult:
    """Read the certificate that the server presents and report its days left."""

    def probe() -> ProbeResult:
        url = urlsplit(base)
        host, port = url.hostname or "", url.port or 443
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the days left matter here, not the chain
        with (
            socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)

        not_after = x509.load_der_x509_certificate(der or b"").not_valid_after_utc
        days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        status = Status.OK
        if days < CERT_WARNING_DAYS:
            status = Status.WARNING
        if days < CERT_CRITICAL_DAYS:
            status = Status.CRITICAL
        return ProbeResult(
            "certificate", status, f"{days:.1f} days left (until {not_after:%Y-%m-%d})"
        )

    return _guard("certificate", probe)


def probe_backend(backend: Backend) -> ProbeResult:
    """Ask a backend for a one-token generation with the first model it lists."""
    name = f"backend {backend.name}"

    def probe() -> ProbeResult:
        key = backend.api_key.get_secret_value() if backend.api_key else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        started = time.perf_counter()
        with httpx.Client(
            base_url=backend.base_url, headers=headers, timeout=120.0, verify=_verify(backend)
        ) as client:
            model = _first_model(client, backend)
            if model is None:
                return ProbeResult(name, Status.CRITICAL, "lists no model")
            _generate_one_token(client, backend, model)
        seconds = time.perf_counter() - started
        return ProbeResult(name, Status.OK, f"{model} answered one token in {seconds:.2f} s")

    return _guard(name, probe)


def _verify(backend: Backend) -> bool | str:
    return str(backend.ca_bundle) if backend.ca_bundle else True


def _first_model(client: httpx.Client, backend: Backend) -> str | None:
    if backend.kind == "openai":
        response = client.get("/v1/models")
        response.raise_for_status()
        models = [str(item["id"]) for item in response.json().get("data", [])]
    else:
        response = client.get("/api/tags")
        response.raise_for_status()
        models = [str(item["name"]) for item in response.json().get("models", [])]
    return models[0] if models else None


def _generate_one_token(client: httpx.Client, backend: Backend, model: str) -> None:
    if backend.kind == "openai":
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        response = client.post("/v1/chat/completions", json=body)
    else:
        body = {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
        response = client.post("/api/generate", json=body)
    response.raise_for_status()


def probe_metrics(base: str, settings: Settings, verify: bool | str = True) -> list[ProbeResult]:
    """Read backup ages and disk free from the web app's /metrics."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(
            f"{base}/metrics", headers=headers, timeout=TIMEOUT_SECONDS, verify=verify
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        detail = f"cannot read /metrics ({exc}); set metrics_token or run on the web host"
        return [ProbeResult("metrics", Status.CRITICAL, detail)]
    values = _gauges(response.text)
    now = time.time()
    return [_backup_result(values, now), _restore_result(values, now), _disk_result(values)]


def _gauges(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                values[sample.name] = sample.value
    return values


def _backup_result(values: dict[str, float], now: float) -> ProbeResult:
    last = values.get("llmcloud_backup_last_success_timestamp_seconds")
    interval = values.get("llmcloud_backup_interval_seconds")
    if not last:
        return ProbeResult("last backup", Status.WARNING, "no successful backup recorded")
    hours = (now - last) / 3600
    if interval and now - last > 2 * interval:
        return ProbeResult(
            "last backup", Status.CRITICAL, f"{hours:.1f} hours ago, over 2 intervals"
        )
    return ProbeResult("last backup", Status.OK, f"{hours:.1f} hours ago")


def _restore_result(values: dict[str, float], now: float) -> ProbeResult:
    last = values.get("llmcloud_backup_last_verified_restore_timestamp_seconds")
    if not last:
        return ProbeResult("verified restore", Status.WARNING, "no verified restore recorded")
    days = (now - last) / 86400
    status = Status.OK
    if days > RESTORE_WARNING_DAYS:
        status = Status.WARNING
    if days > RESTORE_CRITICAL_DAYS:
        status = Status.CRITICAL
    return ProbeResult("verified restore", status, f"{days:.1f} days ago")


def _disk_result(values: dict[str, float]) -> ProbeResult:
    free = values.get("llmcloud_data_dir_free_bytes")
    size = values.get("llmcloud_data_dir_filesystem_size_bytes")
    if free is None or not size:
        return ProbeResult("disk free", Status.WARNING, "not reported by /metrics")
    percent = 100 * free / size
    status = Status.OK
    if percent < DISK_WARNING_PERCENT:
        status = Status.WARNING
    if percent < DISK_CRITICAL_PERCENT:
        status = Status.CRITICAL
    return ProbeResult("disk free", status, f"{percent:.1f}% ({free / 1e9:.1f} GB)")


def probe_socks(host: str, port: int) -> ProbeResult:
    """Send a SOCKS5 greeting offering username/password and expect a SOCKS5 method reply."""
    name = f"SOCKS proxy {host}:{port}"

    def probe() -> ProbeResult:
        with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as sock:
            sock.sendall(b"\x05\x01\x02")
            reply = sock.recv(2)
        if len(reply) != 2 or reply[0] != 5:
            return ProbeResult(name, Status.CRITICAL, f"unexpected reply {reply!r}")
        return ProbeResult(name, Status.OK, "answers SOCKS5")

    return _guard(name, probe)
