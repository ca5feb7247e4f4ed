"""`llmcloud up` serves HTTPS with an internal-CA certificate for localhost by default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmcloud.tls.ca import CAPaths
from tests.tls.conftest import client_context, free_port, served_certificate

STARTUP_SECONDS = 120.0


@dataclass
class Up:
    process: subprocess.Popen[str]
    web_port: int
    output: list[str]

    def wait_for_line(self, text: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if any(text in line for line in self.output):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"`llmcloud up` printed no {text!r}; output:\n" + "".join(self.output[-40:]))


@pytest.fixture(scope="module")
def up_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("up-data")


@pytest.fixture(scope="module")
def running_up(up_data_dir: Path) -> Iterator[Up]:
    """One `llmcloud up` for the module's tests, which only read from it."""
    web_port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLMCLOUD_")}
    env.update({"LLMCLOUD_DATA_DIR": str(up_data_dir), "LLMCLOUD_ENGINE_THREADS": "2"})
    command = [sys.executable, "-m", "llmcloud", "up", "--port", str(web_port)]
    process = subprocess.Popen(
        [*command, "--engine-port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: output.extend(stdout), daemon=True).start()
    up = Up(process, web_port, output)
    up.wait_for_line("Press Ctrl-C to stop")
    yield up
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_up_prints_https_url(running_up: Up) -> None:
    assert any(
        f"running at https://127.0.0.1:{running_up.web_port}" in x for x in running_up.output
    )


def test_up_serves_localhost_certificate(running_up: Up, up_data_dir: Path) -> None:
    ca_file = CAPaths(up_data_dir).cert
    url = f"https://localhost:{running_up.web_port}/healthz"
    response = httpx.get(url, verify=client_context(ca_file))
    assert response.status_code == 200


def test_up_certificate_names_loopback_addresses(running_up: Up, up_data_dir: Path) -> None:
    served = served_certificate(running_up.web_port, CAPaths(up_data_dir).cert, "127.0.0.1")
    assert "CN=localhost" in served.subject.rfc4514_string()


def test_up_reuses_certificate_across_starts(data_dir: Path) -> None:
    from llmcloud.settings import Settings
    from llmcloud.tls.serving import localhost_certificate

    settings = Settings(data_dir=data_dir)
    first = localhost_certificate(settings).cert.read_bytes()
    second = localhost_certificate(settings).cert.read_bytes()
    assert first == second
