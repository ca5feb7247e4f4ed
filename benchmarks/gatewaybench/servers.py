"""The processes under test: the benchmark backend, llmcloud's engine and llmcloud's web app.

Each runs in its own process on a free loopback port, so that the client
never shares a GIL or an event loop with a server it measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from llmcloud.auth.accounts import create_account
from llmcloud.auth.api_keys import create_api_key
from llmcloud.db import default_database_url, open_database
from llmcloud.db.models import Role

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent
REPOSITORY = BENCHMARKS_DIR.parent
START_TIMEOUT_S = 120.0


class ServerProcess:
    """A server in a child process, with its output in a log file for when it fails."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=BENCHMARKS_DIR
        )

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"{self.name} exited with status {status}: {self.tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} was not ready after {START_TIMEOUT_S:.0f} s: {self.tail()}"
        )

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


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of a process to `cpus` (Linux); threads it starts later inherit it."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(thread), cpus)


def set_realtime(pid: int, realtime: bool) -> bool:
    """Move every thread of a process to real-time (SCHED_FIFO) scheduling, or back (Linux).

    A real-time thread runs the moment it wakes, ahead of any thread of normal
    priority on its core. Returns False where the system does not allow it,
    as for a user without CAP_SYS_NICE.
    """
    # Processes that a real-time one starts get normal priority.
    policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK if realtime else os.SCHED_OTHER
    parameters = os.sched_param(1 if realtime else 0)
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setscheduler(int(thread), policy, parameters)
    except PermissionError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def llmcloud_command(*arguments: str) -> list[str]:
    return [str(Path(sys.executable).with_name("llmcloud")), *arguments]


def start_module(name: str, module: str, *arguments: str) -> ServerProcess:
    """Start `python -m module --port PORT ...arguments` on a free port; wait for /v1/models."""
    port = free_port()
    command = [sys.executable, "-m", module, "--port", str(port), *arguments]
    server = ServerProcess(name, command, dict(os.environ), port)
    server.wait_ready("/v1/models")
    return server


def start_backend(model: str, token_interval: float) -> ServerProcess:
    """Start the benchmark backend (gatewaybench/backend.py), listing one model."""
    return start_module(
        "bench-backend",
        "gatewaybench.backend",
        "--model",
        model,
        "--token-interval",
        str(token_interval),
    )


def start_tap(upstream: ServerProcess, report: Path) -> ServerProcess:
    """Start the timing relay (gatewaybench/tap.py) in front of `upstream`, writing to `report`."""
    return start_module(
        f"tap-{upstream.name}",
        "gatewaybench.tap",
        "--upstream-port",
        str(upstream.port),
        "--report",
        str(report),
    )


def start_engine(data_dir: Path, threads: int, *, background: bool = False) -> ServerProcess:
    """Start `llmcloud engine` with the bundled model, kept loaded.

    `background` is the setting engine_background, which `llmcloud up` turns on.
    """
    port = free_port()
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_ENGINE_THREADS": str(threads),
        "LLMCLOUD_ENGINE_BACKGROUND": str(background).lower(),
        "LLMCLOUD_ENGINE_KEEP_ALIVE": "-1",
        "LLMCLOUD_LOG_LEVEL": "WARNING",
    }
    command = llmcloud_command("engine", "--host", "127.0.0.1", "--port", str(port))
    server = ServerProcess("llmcloud-engine", command, env, port)
    server.wait_ready("/readyz")
    return server


def prepare_web_data(data_dir: Path) -> str:
    """Create the web app's database with one account, and return an API key of that account."""
    database = open_database(default_database_url(data_dir))
    try:
        database.upgrade()
        account = create_account(database, "bench", None, role=Role.ADMIN)
        return create_api_key(database, account.id, "benchmark").key
    finally:
        database.dispose()


def start_web(data_dir: Path, backend_urls: dict[str, str], max_parallel: int) -> ServerProcess:
    """Start `llmcloud web` with OpenAI-API backends (name to URL), each taking `max_parallel`.

    The queue limit is raised as well, so that the gateway admits every
    request of the concurrency test instead of answering 503.
    """
    port = free_port()
    backends = [
        {"name": name, "kind": "openai", "base_url": url, "max_parallel": max_parallel}
        for name, url in backend_urls.items()
    ]
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_GATEWAY_BACKENDS": json.dumps(backends),
        "LLMCLOUD_GATEWAY_MAX_QUEUE_PER_MODEL": str(max_parallel),
    }
    command = llmcloud_command("web", "--host", "127.0.0.1", "--port", str(port))
    server = ServerProcess("llmcloud-web", command, env, port)
    server.wait_ready("/readyz")
    return server


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


def start_nginx(data_dir: Path, upstream: ServerProcess) -> ServerProcess:
    """Start nginx in one process as a reverse proxy to `upstream`, for reference rows.

    It streams as docs/tls.md configures nginx in front of the web app (proxy_buffering
    off) and keeps its connections to `upstream` open, as the gateway does.
    """
    data_dir.mkdir(parents=True)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    for kind in kinds:
        (data_dir / kind).mkdir()
    temp_paths = "\n".join(f"    {kind}_temp_path {data_dir / kind};" for kind in kinds)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = data_dir / "nginx.conf"
    config.write_text(
        f"""{user}worker_processes 1;
daemon off;
master_process off;
pid {data_dir / "nginx.pid"};
error_log {data_dir / "error.log"};
events {{
    worker_connections 256;
}}
http {{
    access_log off;
{temp_paths}
    upstream backend {{
        server 127.0.0.1:{upstream.port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    command = ["nginx", "-p", str(data_dir), "-e", str(data_dir / "error.log"), "-c", str(config)]
    server = ServerProcess("nginx", command, dict(os.environ), port)
    server.wait_ready("/v1/models")
    return server
