"""Issuance and renewal against Pebble, with real HTTP-01 validation through the web app."""

from __future__ import annotations

import datetime as dt
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from llmcloud.tls.acme_client import AcmeClient, AcmeConfig
from llmcloud.tls.ca import CA_NAME
from llmcloud.tls.certificates import subject_alt_names
from llmcloud.tls.errors import AcmeError
from llmcloud.tls.renewal import RenewalLoop, lifetime_due, renewal_due
from llmcloud.tls.serving import acme_files
from llmcloud.tls.status import STATUS
from tests.tls.conftest import (
    Pebble,
    WebProcess,
    client_context,
    free_port,
    pebble_roots,
    served_certificate,
    start_pebble,
)

DOMAIN = "llmcloud.test"
ISSUE_WAIT_SECONDS = 30.0


@pytest.fixture
def http_port() -> int:
    return free_port()


@pytest.fixture
def pebble(tmp_path: Path, http_port: int) -> Iterator[Pebble]:
    running = start_pebble(tmp_path / "pebble", http_port)
    yield running
    running.stop()


@pytest.fixture
def acme_web(start_web: Callable[..., WebProcess], pebble: Pebble, http_port: int) -> WebProcess:
    """`llmcloud web` with an ACME certificate for DOMAIN, once Pebble has issued it."""
    web = start_web(
        tls_acme_domains=[DOMAIN],
        tls_acme_directory=pebble.directory_url,
        tls_acme_ca_bundle=str(pebble.ca_bundle),
        tls_http_port=str(http_port),
        tls_renew_check_seconds="1",
    )
    web.wait_ready(None)
    deadline = time.monotonic() + ISSUE_WAIT_SECONDS
    while CA_NAME in served_certificate(web.port, None).issuer.rfc4514_string():
        if time.monotonic() > deadline:
            raise AssertionError(f"no ACME certificate served:\n{web.log()}")
        time.sleep(0.2)
    return web


def acme_client(data_dir: Path, pebble: Pebble) -> AcmeClient:
    config = AcmeConfig(pebble.directory_url, data_dir, "ops@llmcloud.test", pebble.ca_bundle)
    return AcmeClient(config)


def test_web_serves_certificate_from_pebble(acme_web: WebProcess, pebble: Pebble) -> None:
    served = served_certificate(acme_web.port, None)
    root = x509.load_pem_x509_certificates(pebble_roots(pebble))[0]
    assert "Pebble" in served.issuer.rfc4514_string()
    assert "Pebble" in root.subject.rfc4514_string()


def test_acme_certificate_verifies_against_pebble_root(
    acme_web: WebProcess, pebble: Pebble, tmp_path: Path
) -> None:
    roots = tmp_path / "pebble-roots.pem"
    roots.write_bytes(pebble_roots(pebble))
    # The handshake itself verifies the chain and the name against Pebble's root.
    served = served_certificate(acme_web.port, roots, server_name=DOMAIN)
    assert subject_alt_names(served) == (DOMAIN,)


def test_acme_key_stored_with_mode_0600(acme_web: WebProcess, data_dir: Path) -> None:
    files = acme_files(data_dir, [DOMAIN])
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_renewal_replaces_served_certificate_without_failed_request(
    acme_web: WebProcess, pebble: Pebble, data_dir: Path
) -> None:
    files = acme_files(data_dir, [DOMAIN])
    old = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    due = lifetime_due(old) + dt.timedelta(seconds=1)
    loop = RenewalLoop(
        acme_client(data_dir, pebble),
        [DOMAIN],
        files.cert,
        files.key,
        check_seconds=60,
        now=lambda: due,
    )
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def request_loop() -> None:
        url = f"https://127.0.0.1:{acme_web.port}/healthz"
        while not done.is_set():
            try:
                status = httpx.get(url, verify=client_context(None), timeout=5).status_code
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            count[0] += 1
            if status != 200:
                failures.append(f"HTTP {status}")

    requests = threading.Thread(target=request_loop)
    requests.start()
    try:
        renewed = loop.check_once()
        new_serial = x509.load_pem_x509_certificates(files.cert.read_bytes())[0].serial_number
        deadline = time.monotonic() + 10
        seen = served_certificate(acme_web.port, None).serial_number
        while seen != new_serial and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = served_certificate(acme_web.port, None).serial_number
    finally:
        done.set()
        requests.join()
    assert renewed is True
    assert new_serial != old.serial_number
    assert seen == new_serial
    assert failures == []
    assert count[0] > 0


def test_renewal_skips_certificate_not_due(
    acme_web: WebProcess, pebble: Pebble, data_dir: Path
) -> None:
    files = acme_files(data_dir, [DOMAIN])
    loop = RenewalLoop(
        acme_client(data_dir, pebble), [DOMAIN], files.cert, files.key, check_seconds=60
    )
    assert loop.check_once() is False


def test_acme_reports_unservable_challenge(pebble: Pebble, data_dir: Path) -> None:
    # Nothing listens on the HTTP-01 port, so Pebble's validation fails.
    client = acme_client(data_dir, pebble)
    cert, key = data_dir / "certs" / "x.pem", data_dir / "secrets" / "x-key.pem"
    with pytest.raises(AcmeError, match=f"could not validate the http-01 challenge for {DOMAIN}"):
        client.issue([DOMAIN], cert, key)
    assert not cert.exists()


def test_renewal_failure_counted_and_backed_off(pebble: Pebble, data_dir: Path) -> None:
    STATUS.clear()
    cert, key = data_dir / "certs" / "x.pem", data_dir / "secrets" / "x-key.pem"
    now = dt.datetime.now(dt.UTC)
    loop = RenewalLoop(
        acme_client(data_dir, pebble),
        [DOMAIN],
        cert,
        key,
        check_seconds=60,
        served_at="test",
        now=lambda: now,
    )
    assert loop.check_once() is False
    entry = STATUS.snapshot()[0]
    assert entry.renewal_failures_total == 1
    assert entry.last_error is not None
    assert DOMAIN in entry.last_error
    assert loop.next_attempt == now + dt.timedelta(minutes=1)
    assert loop.check_once() is False
    assert STATUS.snapshot()[0].renewal_failures_total == 1


def test_acme_reports_rejected_identifier(pebble: Pebble, data_dir: Path) -> None:
    client = acme_client(data_dir, pebble)
    cert, key = data_dir / "certs" / "x.pem", data_dir / "secrets" / "x-key.pem"
    with pytest.raises(AcmeError, match=r"ACME request for 127\.0\.0\.1 to .* failed"):
        client.issue(["127.0.0.1"], cert, key)


def test_acme_reports_unknown_directory(pebble: Pebble, data_dir: Path) -> None:
    bad_url = pebble.directory_url.replace("/dir", "/nope")
    config = AcmeConfig(bad_url, data_dir, None, pebble.ca_bundle)
    with pytest.raises(AcmeError, match=f"ACME request for {DOMAIN} to {bad_url} failed"):
        AcmeClient(config).issue([DOMAIN], data_dir / "x.pem", data_dir / "x-key.pem")


def test_renewal_due_at_two_thirds_of_lifetime(acme_web: WebProcess, data_dir: Path) -> None:
    cert = x509.load_pem_x509_certificates(acme_files(data_dir, [DOMAIN]).cert.read_bytes())[0]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert renewal_due(cert, [DOMAIN], None) == cert.not_valid_before_utc + lifetime * 2 / 3


def test_renewal_due_follows_earlier_ari_window(acme_web: WebProcess, data_dir: Path) -> None:
    cert = x509.load_pem_x509_certificates(acme_files(data_dir, [DOMAIN]).cert.read_bytes())[0]
    ari_time = cert.not_valid_before_utc + dt.timedelta(days=1)
    assert renewal_due(cert, [DOMAIN], ari_time) == ari_time


def test_renewal_due_now_for_missing_domain(acme_web: WebProcess, data_dir: Path) -> None:
    cert = x509.load_pem_x509_certificates(acme_files(data_dir, [DOMAIN]).cert.read_bytes())[0]
    assert renewal_due(cert, [DOMAIN, "other.test"], None) == cert.not_valid_before_utc


def test_certs_acme_command_replaces_certificate(
    acme_web: WebProcess, pebble: Pebble, data_dir: Path
) -> None:
    from typer.testing import CliRunner

    from llmcloud.cli import app

    files = acme_files(data_dir, [DOMAIN])
    old_serial = x509.load_pem_x509_certificates(files.cert.read_bytes())[0].serial_number
    env = {
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_TLS_ACME_DOMAINS": f'["{DOMAIN}"]',
        "LLMCLOUD_TLS_ACME_DIRECTORY": pebble.directory_url,
        "LLMCLOUD_TLS_ACME_CA_BUNDLE": str(pebble.ca_bundle),
    }
    result = CliRunner().invoke(app, ["certs", "acme"], env=env)
    new_serial = x509.load_pem_x509_certificates(files.cert.read_bytes())[0].serial_number
    assert result.exit_code == 0, result.output
    assert str(files.cert) in result.stdout
    assert new_serial != old_serial


def test_acme_reuses_valid_authorization(tmp_path: Path, http_port: int, data_dir: Path) -> None:
    from tests.tls.conftest import run_web

    pebble = start_pebble(tmp_path / "reuse-pebble", http_port, authz_reuse_percent=100)
    # A plain-HTTP web app on the validation port answers the challenges.
    web = run_web(data_dir, tmp_path, web_port=str(http_port))
    web.port = http_port
    try:
        web.wait_ready(None, https=False)
        client = acme_client(data_dir, pebble)
        cert, key = data_dir / "certs" / "x.pem", data_dir / "secrets" / "x-key.pem"
        first = client.issue([DOMAIN], cert, key)
        second = client.issue([DOMAIN], cert, key)
    finally:
        web.stop()
        pebble.stop()
    assert second.serial_number != first.serial_number
