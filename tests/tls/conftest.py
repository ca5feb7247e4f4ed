"""Fixtures of the certificate tests: an internal CA, `llmcloud web` over HTTPS, Pebble.

`llmcloud web` runs as a real child process, so hot reload is seen without a
restart. Pebble (Let's Encrypt's test CA, Debian package `pebble`) runs on
loopback with pebble-challtestsrv as its DNS server, which resolves every
name to 127.0.0.1, so HTTP-01 validation reaches the test's web app and
nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from llmcloud.tls.ca import CAPaths, init_ca, issue_certificate

STARTUP_SECONDS = 30.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """Return a client context that trusts `ca_file`, or one that verifies nothing for None."""
    if ca_file is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_file))


def served_certificate(
    port: int, ca_file: Path, server_name: str = "localhost"
) -> x509.Certificate:
    """Open a new TLS connection and return the certificate the server presents."""
    context = client_context(ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own config file and LLMCLOUD_* variables out of the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("LLMCLOUD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def ca(data_dir: Path) -> CAPaths:
    init_ca(data_dir, lifetime_days=30)
    return CAPaths(data_dir)


@dataclass
class WebProcess:
    """`llmcloud web` as a child process, with its output collected in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, ca_file: Path | None, *, https: bool = True) -> None:
        """Wait for /healthz; `ca_file` None skips verification."""
        scheme = "https" if https else "http"
        url = f"{scheme}://localhost:{self.port}/healthz"
        verify: Any = client_context(ca_file) if https else False
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llmcloud web exited:\n{self.log()}")
            try:
                if httpx.get(url, verify=verify, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"llmcloud web did not answer {url}:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_web(data_dir: Path, tmp_path: Path, **settings: object) -> WebProcess:
    """Start `llmcloud web` on a free loopback port with LLMCLOUD_* settings."""
    port = free_port()
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_WEB_HOST": "127.0.0.1",
        "LLMCLOUD_WEB_PORT": str(port),
        "LLMCLOUD_TLS_RELOAD_SECONDS": "0.5",
    }
    for name, value in settings.items():
        env[f"LLMCLOUD_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    log_path = tmp_path / f"web-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmcloud", "web"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return WebProcess(process, port, log_path)


@pytest.fixture
def start_web(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., WebProcess]]:
    started: list[WebProcess] = []

    def start(**settings: object) -> WebProcess:
        web = run_web(data_dir, tmp_path, **settings)
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop()


@dataclass
class Pebble:
    """A running Pebble ACME CA and its DNS stub."""

    directory_url: str
    ca_bundle: Path
    management_url: str
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


def start_pebble(work_dir: Path, http_port: int, authz_reuse_percent: int = 0) -> Pebble:
    """Start Pebble on loopback; HTTP-01 validation connects to 127.0.0.1:`http_port`."""
    if shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None:
        pytest.skip("Debian package pebble is not installed (scripts/install-test-packages)")
    work_dir.mkdir(parents=True, exist_ok=True)
    init_ca(work_dir, lifetime_days=30)
    pair = issue_certificate(work_dir, "pebble", ["localhost", "127.0.0.1"], lifetime_days=30)
    listen, management, dns = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(pair.cert_path),
            "privateKey": str(pair.key_path),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    config_path = work_dir / "pebble.json"
    config_path.write_text(json.dumps(config))
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": str(authz_reuse_percent),
    }
    dns_server = subprocess.Popen(
        [
            "pebble-challtestsrv",
            *("-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", ""),
            *("-management", f"127.0.0.1:{free_port()}", "-defaultIPv6", ""),
            "-defaultIPv4",
            "127.0.0.1",
        ],
        stdout=(work_dir / "dns.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    pebble = subprocess.Popen(
        ["pebble", "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns}"],
        env=env,
        stdout=(work_dir / "pebble.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    running = Pebble(
        directory_url=f"https://localhost:{listen}/dir",
        ca_bundle=CAPaths(work_dir).cert,
        management_url=f"https://localhost:{management}",
        processes=[pebble, dns_server],
    )
    _wait_for_pebble(running, work_dir)
    return running


def _wait_for_pebble(pebble: Pebble, work_dir: Path) -> None:
    verify = client_context(pebble.ca_bundle)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(pebble.directory_url, verify=verify, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    pebble.stop()
    raise RuntimeError("pebble did not start:\n" + (work_dir / "pebble.log").read_text())


def pebble_roots(pebble: Pebble) -> bytes:
    """Return Pebble's issuing root, from its management interface."""
    verify = client_context(pebble.ca_bundle)
    response = httpx.get(f"{pebble.management_url}/roots/0", verify=verify, timeout=5)
    response.raise_for_status()
    return response.content
