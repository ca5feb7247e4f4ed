"""Start and stop the two servers under test: llmcloud's engine and llama.cpp's llama-server.

Each runs as its own process on a free loopback port, so that the benchmark
client never shares a GIL or a thread pool with the server it measures.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent
REPOSITORY = BENCHMARKS_DIR.parent
BUILD_SCRIPT = BENCHMARKS_DIR / "build_llama_server.sh"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServerConfig:
    """Settings that both servers share: model file, CPU threads, slots, context per slot."""

    model_path: Path
    threads: int
    slots: int
    slot_ctx: int


class ServerProcess:
    """A server in a child process, with its output in a log file for when it fails."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], url: str) -> None:
        self.name = name
        self.url = url
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPOSITORY
        )

    def wait_ready(self, health_path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"{self.name} exited with status {status}: {self.tail()}")
            try:
                if httpx.get(self.url + health_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        waited = f"{START_TIMEOUT_S:.0f} s"
        raise RuntimeError(f"{self.name} was not ready after {waited}: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_engine(config: ServerConfig, data_dir: Path) -> ServerProcess:
    """Start `llmcloud engine` with the bundled model and wait until it listens."""
    port = free_port()
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_ENGINE_THREADS": str(config.threads),
        "LLMCLOUD_ENGINE_NUM_PARALLEL": str(config.slots),
        "LLMCLOUD_ENGINE_NUM_CTX": str(config.slot_ctx),
        "LLMCLOUD_ENGINE_KEEP_ALIVE": "-1",
        "LLMCLOUD_LOG_LEVEL": "WARNING",
    }
    command = [
        str(Path(sys.executable).with_name("llmcloud")),
        "engine",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = ServerProcess("llmcloud-engine", command, env, f"http://127.0.0.1:{port}")
    server.wait_ready("/readyz")
    return server


def build_llama_server() -> Path:
    """Build llama-server (or find the earlier build) and return the path of its binary."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, cwd=REPOSITORY
    )
    return Path(result.stdout.strip().splitlines()[-1])


def llama_server_version(binary: Path) -> str:
    """Return llama-server's `--version` output, which names the llama.cpp build and compiler."""
    result = subprocess.run(
        [str(binary), "--version"], check=True, capture_output=True, text=True, timeout=30
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    return "; ".join(line.strip() for line in lines if line.strip())


def start_llama_server(config: ServerConfig, binary: Path) -> ServerProcess:
    """Start llama-server with one slot per parallel stream and wait until the model loaded."""
    port = free_port()
    command = [
        str(binary),
        "--model",
        str(config.model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(config.threads),
        "--threads-batch",
        str(config.threads),
        "--parallel",
        str(config.slots),
        "--ctx-size",
        str(config.slots * config.slot_ctx),
        "--n-gpu-layers",
        "0",
        "--no-webui",
    ]
    server = ServerProcess("llama-server", command, dict(os.environ), f"http://127.0.0.1:{port}")
    server.wait_ready("/health")
    return server
