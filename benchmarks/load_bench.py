"""Load-test two web instances and two model backends with simulated chat users.

Usage: .venv/bin/python benchmarks/load_bench.py [--users N] [--duration S] [--quick] [--no-write]

Starts, each as its own process on loopback: two fast fake model backends
(OpenAI streaming API, 8 tokens 10 ms apart, from tests/gateway/fake_backend.py)
and two `llmcloud web` instances that share a scratch PostgreSQL database,
Redis and the session key, each with both backends in its gateway. Every
simulated user has an account, logs in on one instance (users alternate
between them), opens a chat and, for the duration, sends a prompt over the
chat WebSocket, reads the answer to its end, thinks for `--think` seconds
and sends the next one.

It reports the answers completed, the errors (error events, sockets that
failed; the target is 0) and the time to first token (from sending the
prompt to the first `token` event), then rewrites the "Web instances under
load" section of docs/benchmarks.md unless --no-write is given. Needs
PostgreSQL at LLMCLOUD_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) and Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from argon2 import PasswordHasher
from websockets.asyncio.client import ClientConnection, connect

from llmcloud.auth.accounts import create_account
from llmcloud.db import open_database
from llmcloud.db.testing import postgres_server_url, scratch_postgres_database

REPOSITORY = Path(__file__).resolve().parent.parent
DOCS_PAGE = REPOSITORY / "docs" / "benchmarks.md"
SECTION_TITLE = "## Web instances under load"
REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "bench-model"
PASSWORD = "load benchmark password"
SESSION_KEY = "4b" * 32
TOKENS = 8
TOKEN_INTERVAL = 0.01
START_TIMEOUT = 60.0
# Cheap hashes: logging 200 users in must not dominate the run on a small machine.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@dataclass
class Results:
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    first_token_seconds: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_backend(port: int) -> None:
    """Run one fake backend in this process until SIGTERM."""
    sys.path.insert(0, str(REPOSITORY))
    from tests.gateway.fake_backend import FakeBackend

    backend = FakeBackend((MODEL,))
    backend.port = port
    backend.tokens = [f"t{index} " for index in range(TOKENS)]
    backend.token_interval = TOKEN_INTERVAL
    backend.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    backend.stop()


def start_process(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(arguments, env=env, stdout=output, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited at start-up: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {START_TIMEOUT} s: {log.read_text()[-2000:]}")


def web_environment(
    data_dir: Path, port: int, database_url: str, backends: list[str]
) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("LLMCLOUD_")
    }
    gateway = [
        {"name": f"fake-{index}", "kind": "openai", "base_url": url, "max_parallel": 40}
        for index, url in enumerate(backends)
    ]
    environment.update(
        {
            "LLMCLOUD_DATA_DIR": str(data_dir),
            "LLMCLOUD_WEB_PORT": str(port),
            "LLMCLOUD_DATABASE_URL": database_url,
            "LLMCLOUD_REDIS_URL": REDIS_URL,
            "LLMCLOUD_SESSION_SECRET_KEY": SESSION_KEY,
            "LLMCLOUD_GATEWAY_BACKENDS": json.dumps(gateway),
            "LLMCLOUD_GATEWAY_MAX_QUEUE_PER_MODEL": "1000",
            "LLMCLOUD_WEB_DEFAULT_MODEL": MODEL,
            "LLMCLOUD_LOG_LEVEL": "WARNING",
        }
    )
    return environment


def create_users(database_url: str, count: int) -> list[str]:
    database = open_database(database_url)
    try:
        database.upgrade()
        names = [f"user{index:03d}" for index in range(count)]
        for name in names:
            create_account(database, name, PASSWORD, hasher=CHEAP_HASHER)
        return names
    finally:
        database.dispose()


async def log_in(client: httpx.AsyncClient, url: str, username: str) -> tuple[str, str]:
    """Log in and open a chat; return the chat id and the Cookie header."""
    headers = {"Origin": url}
    response = await client.post(
        f"{url}/login", data={"username": username, "password": PASSWORD}, headers=headers
    )
    if response.status_code != 303:
        raise RuntimeError(f"login of {username} on {url} failed: HTTP {response.status_code}")
    cookie = "; ".join(f"{name}={value}" for name, value in response.cookies.items())
    page = await client.get(f"{url}/chats", headers={"Cookie": cookie})
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    created = await client.post(
        f"{url}/chats", data={"csrf_token": token}, headers={**headers, "Cookie": cookie}
    )
    return str(created.headers["location"]).rsplit("/", 1)[-1], cookie


async def chat_user(
    url: str, chat_id: str, cookie: str, stop_at: float, think: float, results: Results
) -> None:
    socket_url = url.replace("http://", "ws://") + f"/ws/chats/{chat_id}"
    headers = {"Origin": url, "Cookie": cookie}
    try:
        async with connect(socket_url, additional_headers=headers, open_timeout=30) as chat:
            while time.monotonic() < stop_at:
                await one_answer(chat, results)
                await asyncio.sleep(think)
    except Exception as exc:
        results.errors.append(f"socket failed: {type(exc).__name__}: {exc}")


async def one_answer(chat: ClientConnection, results: Results) -> None:
    sent = time.monotonic()
    await chat.send(json.dumps({"type": "send", "content": "Hello", "model": MODEL}))
    first_token: float | None = None
    while True:
        event = json.loads(await asyncio.wait_for(chat.recv(), 60))
        kind = event["type"]
        if kind == "token" and first_token is None:
            first_token = time.monotonic() - sent
        elif kind == "error":
            results.errors.append(f"error event: {event.get('message', '')[:200]}")
            return
        elif kind == "done":
            results.completed += 1
            if first_token is not None:
                results.first_token_seconds.append(first_token)
            return


async def run_users(
    web_urls: list[str], users: list[str], duration: float, think: float
) -> Results:
    results = Results()
    # Each login verifies an argon2 hash, so a few at a time keep the servers responsive.
    logins = asyncio.Semaphore(8)

    async def limited_log_in(url: str, name: str) -> tuple[str, str]:
        async with logins:
            return await log_in(client, url, name)

    timeout = httpx.Timeout(60.0, pool=None)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=8)) as client:
        sessions = await asyncio.gather(
            *(limited_log_in(web_urls[index % 2], name) for index, name in enumerate(users))
        )
    stop_at = time.monotonic() + duration
    await asyncio.gather(
        *(
            chat_user(web_urls[index % 2], chat_id, cookie, stop_at, think, results)
            for index, (chat_id, cookie) in enumerate(sessions)
        )
    )
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(results: Results, arguments: argparse.Namespace) -> str:
    ttft = results.first_token_seconds
    p50 = f"{statistics.median(ttft) * 1000:.0f} ms" if ttft else "n/a"
    p99 = f"{percentile(ttft, 0.99) * 1000:.0f} ms" if ttft else "n/a"
    cpu = cpu_model()
    rate = results.completed / arguments.duration
    lines = [
        SECTION_TITLE,
        "",
        f"{arguments.users} simulated users chat for {arguments.duration:.0f} s across two "
        "`llmcloud web` instances (shared PostgreSQL, Redis and session key) and two fake "
        f"backends ({TOKENS} tokens, {TOKEN_INTERVAL * 1000:.0f} ms apart), measured by "
        "`benchmarks/load_bench.py`. Each user sends a prompt over the chat WebSocket, reads "
        f"the answer to its end and waits {arguments.think:.1f} s. Time to first token runs "
        "from sending the prompt to the first `token` event. Every process, the client "
        "included, shares the machine's cores.",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Load average (1 min) {arguments.load_before:.1f} before the run and "
        f"{os.getloadavg()[0]:.1f} after, other work included. "
        f"Date {datetime.now(UTC).date()}. Command: "
        f"`.venv/bin/python benchmarks/load_bench.py --users {arguments.users} "
        f"--duration {arguments.duration:.0f}`",
        "",
        "| Users | Answers | Answers/s | Errors (target 0) | TTFT p50 | TTFT p99 |",
        "|---|---|---|---|---|---|",
        f"| {arguments.users} | {results.completed} | {rate:.1f} | "
        f"{len(results.errors)} | {p50} | {p99} |",
    ]
    if results.errors:
        lines += ["", "First errors:", ""]
        lines += [f"- `{error}`" for error in results.errors[:5]]
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def write_section(section: str) -> None:
    text = DOCS_PAGE.read_text() if DOCS_PAGE.exists() else "# Benchmarks\n"
    start = text.find(SECTION_TITLE)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        rest = "" if end == -1 else text[end:]
        text = text[:start] + section + rest
    DOCS_PAGE.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chatting")
    parser.add_argument(
        "--think", type=float, default=1.0, help="seconds a user waits after each answer"
    )
    parser.add_argument("--quick", action="store_true", help="20 users for 10 s, a check")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    parser.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve_backend:
        serve_backend(arguments.serve_backend)
        return 0
    if arguments.quick:
        arguments.users, arguments.duration = 20, 10.0

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    arguments.load_before = os.getloadavg()[0]
    processes: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory(prefix="load-bench-") as scratch,
        scratch_postgres_database(postgres_server_url()) as database_url,
    ):
        folder = Path(scratch)
        try:
            backends = []
            for index in range(2):
                port = free_port()
                log = folder / f"backend-{index}.log"
                command = [sys.executable, __file__, "--serve-backend", str(port)]
                processes.append(start_process(command, dict(os.environ), log))
                wait_ready(f"http://127.0.0.1:{port}/v1/models", processes[-1], log)
                backends.append(f"http://127.0.0.1:{port}")

            users = create_users(database_url, arguments.users)
            web_urls = []
            for index in range(2):
                port = free_port()
                log = folder / f"web-{index}.log"
                env = web_environment(folder / f"web-{index}", port, database_url, backends)
                processes.append(start_process([sys.executable, "-m", "llmcloud", "web"], env, log))
                wait_ready(f"http://127.0.0.1:{port}/readyz", processes[-1], log)
                web_urls.append(f"http://127.0.0.1:{port}")

            results = asyncio.run(run_users(web_urls, users, arguments.duration, arguments.think))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)

    section = report(results, arguments)
    print(section)
    if not arguments.no_write:
        write_section(section)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
