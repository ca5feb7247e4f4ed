"""Fixtures of the deployment tests: clean settings, a scratch PostgreSQL database, web processes.

The PostgreSQL tests use a fresh database on the server named by
LLMCLOUD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
and are skipped, with the connection error as the reason, when none is reachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import scratch_postgres_or_skip

STARTUP_TIMEOUT_SECONDS = 60.0
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own config file and LLMCLOUD_* variables out of the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("LLMCLOUD_") and name != "LLMCLOUD_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with scratch_postgres_or_skip() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server on loopback; the test is skipped, naming the error, when none answers."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class WebProcess:
    """One `llmcloud web` child process on loopback."""

    process: subprocess.Popen[str]
    url: str

    def stop(self) -> str:
        """Stop the process and return what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, errors = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        return errors


def web_environment(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("LLMCLOUD_")
    }
    environment.update(
        {
            "LLMCLOUD_DATA_DIR": str(data_dir),
            "LLMCLOUD_WEB_HOST": "127.0.0.1",
            "LLMCLOUD_WEB_PORT": str(port),
            "LLMCLOUD_GATEWAY_HEALTH_INTERVAL": "0.2",
        }
    )
    environment.update({f"LLMCLOUD_{name.upper()}": value for name, value in settings.items()})
    return environment


def start_web(data_dir: Path, **settings: str) -> WebProcess:
    """Start `llmcloud web` with the given settings and wait for /healthz to return 200."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmcloud", "web"],
        env=web_environment(data_dir, port, **settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    web = WebProcess(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return web
        try:
            if httpx.get(f"{web.url}/healthz", timeout=1.0).status_code == 200:
                return web
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    errors = web.stop()
    raise AssertionError(f"llmcloud web did not start within {STARTUP_TIMEOUT_SECONDS} s: {errors}")
