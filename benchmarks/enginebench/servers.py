"""Start and stop the two servers under test: llmcloud's engine and llama.cpp's llama-server.

Each runs as its own process on a free loopback port, so that the benchmark
client never shares a GIL or a thread pool with the server it measures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gatewaybench.servers import BENCHMARKS_DIR, REPOSITORY, ServerProcess, free_port

__all__ = ["REPOSITORY", "ServerConfig", "ServerProcess", "start_engine", "start_llama_server"]

BUILD_SCRIPT = BENCHMARKS_DIR / "build_llama_server.sh"


@dataclass(frozen=True)
class ServerConfig:
    """Settings that both servers share: model file, CPU threads, slots, context per slot."""

    model_path: Path
    threads: int
    slots: int
    slot_ctx: int


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
    server = ServerProcess("llmcloud-engine", command, env, port)
    server.wait_ready("/readyz")
    return server


def build_llama_server() -> Path:
    """Build llama-server (or find the earlier build) and return the path of its binary."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, cwd=REPOSITORY
    )
    return Path(result.stdout.strip().splitlines()[-1]).resolve()


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
        str(binary.resolve()),
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
    server = ServerProcess("llama-server", command, dict(os.environ), port)
    server.wait_ready("/health")
    return server
