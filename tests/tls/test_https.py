"""`llmcloud web` over HTTPS: protocol versions, ciphers, hot reload, bad files, redirect port."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from llmcloud.tls.ca import CAPaths, issue_certificate
from llmcloud.tls.certificates import (
    CertificatePair,
    chain_pem,
    generate_key,
    key_pem,
    load_key,
    write_private,
    write_public,
)
from tests.tls.conftest import WebProcess, client_context, free_port, served_certificate

RELOAD_WAIT_SECONDS = 10.0


@pytest.fixture
def web_pair(ca: CAPaths) -> CertificatePair:
    return issue_certificate(ca.data_dir, "web", ["localhost", "127.0.0.1"], lifetime_days=30)


@pytest.fixture
def https_web(
    start_web: Callable[..., WebProcess], ca: CAPaths, web_pair: CertificatePair
) -> WebProcess:
    web = start_web(tls_cert_file=str(web_pair.cert_path), tls_key_file=str(web_pair.key_path))
    web.wait_ready(ca.cert)
    return web


def handshake(port: int, context: ssl.SSLContext) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


def legacy_client(version: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    """A client context that offers only `version`, verification off."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers(ciphers)
    with warnings.catch_warnings():
        # Setting TLS 1.0 or 1.1 warns (deprecated), but this client offers them on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


def wait_for_serial(port: int, ca_file: Path, serial: int) -> int:
    """Return the served serial once it equals `serial`, or the last one after the wait."""
    deadline = threading.Event()
    timer = threading.Timer(RELOAD_WAIT_SECONDS, deadline.set)
    timer.start()
    seen = served_certificate(port, ca_file).serial_number
    while seen != serial and not deadline.wait(0.2):
        seen = served_certificate(port, ca_file).serial_number
    timer.cancel()
    return seen


def write_expired_pair(ca: CAPaths, cert_path: Path, key_path: Path) -> int:
    """Write an expired certificate for localhost, signed by the CA, and its key."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = load_key(ca.key)
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    write_private(key_path, key_pem(key))
    write_public(cert_path, chain_pem([cert]))
    return cert.serial_number


def test_web_serves_configured_certificate(
    https_web: WebProcess, ca: CAPaths, web_pair: CertificatePair
) -> None:
    served = served_certificate(https_web.port, ca.cert)
    assert served.serial_number == web_pair.leaf.serial_number


def test_web_healthz_over_https(https_web: WebProcess, ca: CAPaths) -> None:
    url = f"https://localhost:{https_web.port}/healthz"
    response = httpx.get(url, verify=client_context(ca.cert))
    assert response.status_code == 200


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_web_rejects_old_tls_versions(https_web: WebProcess, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(https_web.port, legacy_client(version))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_web_accepts_tls_1_2_and_1_3(https_web: WebProcess, version: ssl.TLSVersion) -> None:
    handshake(https_web.port, legacy_client(version, "DEFAULT"))


def test_web_rejects_non_aead_ciphers(https_web: WebProcess) -> None:
    cbc_only = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA"
    with pytest.raises(ssl.SSLError):
        handshake(https_web.port, legacy_client(ssl.TLSVersion.TLSv1_2, cbc_only))


def test_sslscan_finds_only_aead_ciphers(https_web: WebProcess) -> None:
    if shutil.which("sslscan") is None:
        pytest.skip("Debian package sslscan is not installed (scripts/install-test-packages)")
    output = subprocess.run(
        [
            "sslscan",
            "--no-colour",
            "--no-fallback",
            "--no-renegotiation",
            "--no-heartbleed",
            f"127.0.0.1:{https_web.port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    accepted = [line for line in output.splitlines() if line.startswith(("Preferred", "Accepted"))]
    assert accepted, output
    for line in accepted:
        assert "TLSv1.2" in line or "TLSv1.3" in line, line
        assert "GCM" in line or "CHACHA20" in line, line


def test_web_reloads_certificate_without_failed_request(
    https_web: WebProcess, ca: CAPaths, web_pair: CertificatePair
) -> None:
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def request_loop() -> None:
        context = client_context(ca.cert)
        url = f"https://localhost:{https_web.port}/healthz"
        while not done.is_set():
            try:
                status = httpx.get(url, verify=context, timeout=5).status_code
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            count[0] += 1
            if status != 200:
                failures.append(f"HTTP {status}")

    loop = threading.Thread(target=request_loop)
    loop.start()
    try:
        renewed = issue_certificate(
            ca.data_dir, "web", ["localhost", "127.0.0.1"], lifetime_days=30
        )
        seen = wait_for_serial(https_web.port, ca.cert, renewed.leaf.serial_number)
    finally:
        done.set()
        loop.join()
    assert seen == renewed.leaf.serial_number
    assert seen != web_pair.leaf.serial_number
    assert failures == []
    assert count[0] > 0


def test_web_keeps_old_certificate_when_key_mismatches(
    https_web: WebProcess, ca: CAPaths, web_pair: CertificatePair
) -> None:
    other = issue_certificate(ca.data_dir, "other", ["localhost"], lifetime_days=30)
    shutil.copyfile(other.key_path, web_pair.key_path)
    seen = wait_for_serial(https_web.port, ca.cert, serial=-1)
    assert seen == web_pair.leaf.serial_number
    assert f"cannot load the changed certificate {web_pair.cert_path}" in https_web.log()
    assert "does not match" in https_web.log()


def test_web_keeps_old_certificate_when_replacement_expired(
    https_web: WebProcess, ca: CAPaths, web_pair: CertificatePair
) -> None:
    expired_serial = write_expired_pair(ca, web_pair.cert_path, web_pair.key_path)
    seen = wait_for_serial(https_web.port, ca.cert, expired_serial)
    assert seen == web_pair.leaf.serial_number
    assert f"certificate {web_pair.cert_path} expired on" in https_web.log()


def test_web_start_fails_for_mismatched_key(tmp_path: Path, ca: CAPaths) -> None:
    first = issue_certificate(ca.data_dir, "first", ["localhost"], lifetime_days=30)
    second = issue_certificate(ca.data_dir, "second", ["localhost"], lifetime_days=30)
    result = subprocess.run(
        [sys.executable, "-m", "llmcloud", "web", "--port", str(free_port())],
        env=_env(ca.data_dir, tls_cert_file=first.cert_path, tls_key_file=second.key_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"key file {second.key_path} does not match certificate" in result.stderr


def test_web_start_fails_for_missing_key_setting(ca: CAPaths, web_pair: CertificatePair) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmcloud", "web", "--port", str(free_port())],
        env=_env(ca.data_dir, tls_cert_file=web_pair.cert_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "tls_cert_file is set but tls_key_file is not" in result.stderr


def test_redirect_port_sends_to_https(
    start_web: Callable[..., WebProcess], ca: CAPaths, web_pair: CertificatePair
) -> None:
    http_port = free_port()
    web = start_web(
        tls_cert_file=str(web_pair.cert_path),
        tls_key_file=str(web_pair.key_path),
        tls_http_port=str(http_port),
    )
    web.wait_ready(ca.cert)
    response = httpx.get(f"http://localhost:{http_port}/chats?x=1")
    assert response.status_code == 301
    assert response.headers["location"] == f"https://localhost:{web.port}/chats?x=1"


def test_redirect_port_answers_acme_challenge(
    start_web: Callable[..., WebProcess], ca: CAPaths, web_pair: CertificatePair
) -> None:
    http_port = free_port()
    web = start_web(
        tls_cert_file=str(web_pair.cert_path),
        tls_key_file=str(web_pair.key_path),
        tls_http_port=str(http_port),
    )
    web.wait_ready(ca.cert)
    challenge = ca.data_dir / "certs" / "acme-challenges" / "tok_en-1"
    write_public(challenge, b"tok_en-1.thumbprint")
    response = httpx.get(f"http://localhost:{http_port}/.well-known/acme-challenge/tok_en-1")
    assert response.status_code == 200
    assert response.text == "tok_en-1.thumbprint"


def test_web_sends_hsts_for_https_public_url(
    start_web: Callable[..., WebProcess], ca: CAPaths, web_pair: CertificatePair
) -> None:
    web = start_web(
        tls_cert_file=str(web_pair.cert_path),
        tls_key_file=str(web_pair.key_path),
        public_url="https://localhost",
    )
    web.wait_ready(ca.cert)
    response = httpx.get(f"https://localhost:{web.port}/healthz", verify=client_context(ca.cert))
    assert response.headers["strict-transport-security"] == "max-age=63072000"


def _env(data_dir: Path, **settings: Path) -> dict[str, str]:
    env = {**os.environ, "LLMCLOUD_DATA_DIR": str(data_dir), "LLMCLOUD_WEB_HOST": "127.0.0.1"}
    for name, value in settings.items():
        env[f"LLMCLOUD_{name.upper()}"] = str(value)
    return env


def test_web_metrics_show_certificate_expiry(
    https_web: WebProcess, ca: CAPaths, web_pair: CertificatePair
) -> None:
    url = f"https://localhost:{https_web.port}/metrics"
    text = httpx.get(url, verify=client_context(ca.cert)).text
    expected = web_pair.leaf.not_valid_after_utc.timestamp()
    line = next(
        (x for x in text.splitlines() if x.startswith("llmcloud_certificate_not_after_timestamp")),
        "",
    )
    assert f'served_at="web:{https_web.port}"' in line
    assert float(line.rsplit(" ", 1)[-1]) == expected
