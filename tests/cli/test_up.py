"""`llmcloud up` as a real process: start-up, the printed URL, clean stops, a dying part."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    web_port: int
    engine_port: int
    output: list[str]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> httpx.Response:
        """GET from the web app, trusting only the internal CA that `up` created."""
        return httpx.get(self.url + path, verify=str(self.data_dir / "certs" / "ca.pem"))

    def wait_for_line(self, text: str, seconds: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(text in line for line in self.output):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"`llmcloud up` printed no {text!r}; output:\n" + "".join(self.output[-40:]))

    def child_pid(self, command: str) -> int:
        """Return the pid of the child process running `llmcloud <command>`."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
            if int(parent.split()[1]) == self.process.pid and command.encode() in argv:
                return int(entry.name)
        raise AssertionError(f"no child process runs `llmcloud {command}`")


@pytest.fixture
def running_up(tmp_path: Path) -> Iterator[UpProcess]:
    web_port, engine_port = free_port(), free_port()
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LLMCLOUD_ENGINE_THREADS": "2",
    }
    command = [sys.executable, "-m", "llmcloud", "up", "--port", str(web_port)]
    process = subprocess.Popen(
        [*command, "--engine-port", str(engine_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    up = UpProcess(process, web_port, engine_port, output, tmp_path / "data")
    yield up
    # Stop `up` the way an operator would, so that it stops its children; if it hangs, kill its
    # whole process group, children included, so that no engine or web app outlives the test.
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_prints_url_and_first_step(running_up: UpProcess) -> None:
    running_up.wait_for_line("create the first account")
    assert any(f"running at {running_up.url}" in line for line in running_up.output)


def test_up_serves_web_app_and_engine(running_up: UpProcess) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    assert running_up.get("/healthz").json() == {"status": "ok"}
    assert running_up.get("/readyz").json()["backends"] == ["engine"]
    assert running_up.get("/signup").status_code == 200


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_cleanly_on_signal(running_up: UpProcess, stop_signal: signal.Signals) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    running_up.process.send_signal(stop_signal)
    assert running_up.process.wait(timeout=60) == 0
    assert not is_listening(running_up.web_port)
    assert not is_listening(running_up.engine_port)


def test_up_exits_naming_dead_engine(running_up: UpProcess) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    os.kill(running_up.child_pid("engine"), signal.SIGKILL)
    assert running_up.process.wait(timeout=60) == 1
    running_up.wait_for_line("the engine exited unexpectedly", seconds=5)
    assert not is_listening(running_up.web_port)
