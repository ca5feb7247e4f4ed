"""`llmcloud socks serve` serves /metrics on socks_metrics_port, with the proxy's totals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_socks_process_serves_metrics(tmp_path: Path) -> None:
    socks_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LLMCLOUD_DATA_DIR": str(tmp_path / "data"),
        "LLMCLOUD_SOCKS_HOST": "127.0.0.1",
        "LLMCLOUD_SOCKS_PORT": str(socks_port),
        "LLMCLOUD_SOCKS_METRICS_PORT": str(metrics_port),
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "llmcloud"), "socks", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        health = wait_for(f"{base}/healthz")
        with socket.create_connection(("127.0.0.1", socks_port), timeout=5) as client:
            client.sendall(b"\x05\x01\x00")  # offers only "no authentication"
            client.recv(2)
        time.sleep(0.2)
        text = httpx.get(f"{base}/metrics").text
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)

    assert health.status_code == 200
    assert "llmcloud_socks_connections_total{" in text
    assert 'llmcloud_http_requests_total{app="socks"' in text
    assert process.returncode == 0, errors.decode()
