"""X-Forwarded-* headers reaching `llmcloud web` itself, as run from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.oidc.server import free_port

START_SECONDS = 60
FORGED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


def start_web(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LLMCLOUD_DATA_DIR": str(tmp_path / "data"),
        "LLMCLOUD_WEB_PORT": str(port),
        "LLMCLOUD_PUBLIC_URL": url,
        "LLMCLOUD_ENGINE_URL": f"http://127.0.0.1:{free_port()}",
        "LLMCLOUD_AUTH_GITHUB_CLIENT_ID": "id",
        "LLMCLOUD_AUTH_GITHUB_CLIENT_SECRET": "secret",
        "LLMCLOUD_AUTH_GITHUB_URL": f"http://127.0.0.1:{free_port()}",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "llmcloud", "web"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llmcloud web exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            httpx.get(f"{url}/login", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"llmcloud web did not start within {START_SECONDS} s")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    process, url = start_web(tmp_path)
    yield url
    process.terminate()
    process.wait(timeout=15)


def test_web_ignores_forwarded_headers_from_loopback(web: str) -> None:
    response = httpx.get(f"{web}/auth/github/login", headers=FORGED)
    assert response.status_code == 303
    assert "secure" not in response.headers["set-cookie"].lower()
    assert httpx.URL(response.headers["location"]).params["redirect_uri"].startswith(web)


def test_web_honours_forwarded_headers_from_trusted_proxy(tmp_path: Path) -> None:
    process, url = start_web(tmp_path, LLMCLOUD_TRUSTED_PROXIES='["127.0.0.1"]')
    try:
        response = httpx.get(f"{url}/auth/github/login", headers=FORGED)
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()
