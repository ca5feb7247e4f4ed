"""Real SOCKS clients through the proxy: curl, httpx, and the `llmcloud socks` command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.socks.conftest import (
    ADMIN,
    ALLOWED_HOST,
    DENIED_HOST,
    PAGE_BODY,
    PASSWORD,
    PageServer,
    RunningProxy,
)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is missing")
# curl's exit status for a SOCKS handshake that failed, such as a denied destination.
CURL_PROXY_HANDSHAKE_FAILED = 97


def curl(proxy: RunningProxy, url: str, user: str = f"{ADMIN}:{PASSWORD}") -> Any:
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--socks5-hostname",
            f"{proxy.host}:{proxy.port}",
            "--proxy-user",
            user,
            url,
        ],
        capture_output=True,
        check=False,
    )


@needs_curl
def test_curl_fetches_allowed_page(proxy: RunningProxy, page_server: PageServer) -> None:
    result = curl(proxy, f"http://{ALLOWED_HOST}:{page_server.port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PAGE_BODY


@needs_curl
def test_curl_sends_name_to_proxy(make_proxy: Any, page_server: PageServer) -> None:
    proxy = make_proxy()
    # --socks5-hostname hands the name to the proxy, which resolves it.
    result = curl(proxy, f"http://localhost:{page_server.port}/")
    assert result.returncode == CURL_PROXY_HANDSHAKE_FAILED


@needs_curl
def test_curl_denied_destination(proxy: RunningProxy, denied_page_server: PageServer) -> None:
    result = curl(proxy, f"http://{DENIED_HOST}:{denied_page_server.port}/")
    assert result.returncode == CURL_PROXY_HANDSHAKE_FAILED
    assert b"(2)" in result.stderr  # curl prints the reply code


@needs_curl
def test_curl_wrong_password(proxy: RunningProxy, page_server: PageServer) -> None:
    result = curl(proxy, f"http://{ALLOWED_HOST}:{page_server.port}/", f"{ADMIN}:wrong-password")
    assert result.returncode == CURL_PROXY_HANDSHAKE_FAILED


def test_httpx_fetches_allowed_page(proxy: RunningProxy, page_server: PageServer) -> None:
    proxy_url = f"socks5://{ADMIN}:{PASSWORD.replace(' ', '%20')}@{proxy.host}:{proxy.port}"
    with httpx.Client(proxy=proxy_url, timeout=10) as client:
        response = client.get(f"http://{ALLOWED_HOST}:{page_server.port}/")
    assert response.status_code == 200
    assert response.content == PAGE_BODY


def test_httpx_denied_destination(proxy: RunningProxy, denied_page_server: PageServer) -> None:
    proxy_url = f"socks5://{ADMIN}:{PASSWORD.replace(' ', '%20')}@{proxy.host}:{proxy.port}"
    with httpx.Client(proxy=proxy_url, timeout=10) as client, pytest.raises(httpx.ProxyError):
        client.get(f"http://{DENIED_HOST}:{denied_page_server.port}/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@needs_curl
@pytest.mark.parametrize("arguments", [["socks"], ["socks", "serve"]])
def test_command_serves_and_stops_cleanly(
    tmp_path: Path, accounts_database: Any, page_server: PageServer, arguments: list[str]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LLMCLOUD_DATABASE_URL": str(accounts_database.engine.url),
        "LLMCLOUD_SOCKS_PORT": str(port),
        "LLMCLOUD_SOCKS_ALLOW": f'["{ALLOWED_HOST}"]',
        "LLMCLOUD_SOCKS_ALLOW_NO_AUTH": "true",
    }
    command = [sys.executable, "-m", "llmcloud", *arguments]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        result = subprocess.run(
            [
                "curl",
                "--silent",
                "--max-time",
                "10",
                "--socks5-hostname",
                f"127.0.0.1:{port}",
                f"http://{ALLOWED_HOST}:{page_server.port}/",
            ],
            capture_output=True,
            check=False,
        )
        assert result.stdout == PAGE_BODY
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "SOCKS proxy stopped" in stderr
