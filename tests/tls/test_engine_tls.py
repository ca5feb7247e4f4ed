"""`llmcloud engine` over HTTPS, and the gateway verifying its certificate with a CA bundle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmcloud.gateway import Gateway
from llmcloud.settings import Settings
from llmcloud.tls.ca import CAPaths, issue_certificate
from tests.tls.conftest import client_context, free_port

STARTUP_SECONDS = 60.0


@pytest.fixture
def https_engine(data_dir: Path, ca: CAPaths, tmp_path: Path) -> Iterator[str]:
    """Start `llmcloud engine` with a certificate from the internal CA; yield its URL."""
    pair = issue_certificate(data_dir, "engine", ["localhost"], lifetime_days=30)
    port = free_port()
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_ENGINE_PORT": str(port),
        "LLMCLOUD_TLS_ENGINE_CERT_FILE": str(pair.cert_path),
        "LLMCLOUD_TLS_ENGINE_KEY_FILE": str(pair.key_path),
    }
    log = (tmp_path / "engine.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "llmcloud", "engine"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"https://localhost:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            httpx.get(url + "/healthz", verify=client_context(ca.cert), timeout=2)
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((tmp_path / "engine.log").read_text()) from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(15)
    log.close()


def backend_healthy(url: str, data_dir: Path, ca_bundle: Path | None) -> tuple[bool, str | None]:
    backend: dict[str, object] = {"name": "engine", "kind": "ollama", "base_url": url}
    if ca_bundle is not None:
        backend["ca_bundle"] = str(ca_bundle)
    settings = Settings(data_dir=data_dir, gateway_backends=[backend])

    async def check() -> tuple[bool, str | None]:
        gateway = Gateway.from_settings(settings)
        await gateway.start()
        try:
            status = gateway.status().backends[0]
            return status.healthy, status.last_error
        finally:
            await gateway.close()

    return asyncio.run(check())


def test_engine_serves_https(https_engine: str, ca: CAPaths) -> None:
    response = httpx.get(https_engine + "/api/version", verify=client_context(ca.cert))
    assert response.status_code == 200


def test_gateway_trusts_engine_with_ca_bundle(https_engine: str, ca: CAPaths) -> None:
    healthy, error = backend_healthy(https_engine, ca.data_dir, ca.cert)
    assert healthy, error


def test_gateway_rejects_engine_without_ca_bundle(https_engine: str, ca: CAPaths) -> None:
    healthy, error = backend_healthy(https_engine, ca.data_dir, None)
    assert not healthy
    assert error is not None
    assert "certificate" in error.lower()


def test_engine_start_fails_for_missing_key_setting(data_dir: Path, ca: CAPaths) -> None:
    pair = issue_certificate(data_dir, "engine", ["localhost"], lifetime_days=30)
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_ENGINE_PORT": str(free_port()),
        "LLMCLOUD_TLS_ENGINE_CERT_FILE": str(pair.cert_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "llmcloud", "engine"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "tls_engine_cert_file is set but tls_engine_key_file is not" in result.stderr
