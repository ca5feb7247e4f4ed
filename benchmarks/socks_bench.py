"""Benchmark the SOCKS5 proxy against microsocks and `ssh -D`, side by side in one run.

Usage: .venv/bin/python benchmarks/socks_bench.py [--megabytes N] [--tunnels N] [--seconds S]

Starts each of these as its own process on loopback: a target server on
127.0.0.2, which streams bytes on request and echoes otherwise;
`llmcloud socks serve` with an admin account; microsocks with a username and
password; and a private sshd with its own host key and config, plus
`ssh -N -D` logged in to it. Then, for each proxy, it measures:

- throughput: MB/s (10^6 bytes) of one download through one tunnel, the
  median of three runs;
- connection rate: handshakes with login and CONNECT per second, from 32
  clients at once, each closing after the success reply;
- concurrent tunnels: tunnels opened and held at once, each checked with an
  echo after all are open, and the number that failed.

`ssh -D` takes no SOCKS login (the SSH login covers it); the other two
take RFC 1929 logins on every connection. Results are printed as Markdown.
Needs the Debian packages microsocks, openssh-server and openssh-client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TARGET_HOST = "127.0.0.2"
USERNAME = "bench"
PASSWORD = "bench-password-1"
BUFFER = bytes(1024 * 1024)
RATE_CLIENTS = 32


@dataclass(frozen=True)
class Proxy:
    name: str
    port: int
    login: tuple[str, str] | None


# The target server, run in a child process.


def serve_target(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_target_connection, args=(conn,), daemon=True).start()


def _serve_target_connection(conn: socket.socket) -> None:
    with conn:
        try:
            command = conn.recv(1)
            if command == b"D":
                (size,) = struct.unpack("!Q", _receive_exactly(conn, 8))
                view = memoryview(BUFFER)
                while size > 0:
                    chunk = view[: min(size, len(BUFFER))]
                    conn.sendall(chunk)
                    size -= len(chunk)
            elif command == b"E":
                while data := conn.recv(65536):
                    conn.sendall(data)
        except OSError:
            pass


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


# A minimal SOCKS5 client, in blocking and asyncio forms.


def _greeting(login: tuple[str, str] | None) -> bytes:
    return b"\x05\x01\x02" if login else b"\x05\x01\x00"


def _credentials(login: tuple[str, str]) -> bytes:
    user, password = login[0].encode(), login[1].encode()
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


def _connect_request(port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton(TARGET_HOST) + struct.pack("!H", port)


def open_tunnel(proxy: Proxy, target_port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_greeting(proxy.login))
    method = _receive_exactly(sock, 2)
    if proxy.login:
        assert method == b"\x05\x02", method
        sock.sendall(_credentials(proxy.login))
        assert _receive_exactly(sock, 2) == b"\x01\x00", "login failed"
    sock.sendall(_connect_request(target_port))
    reply = _receive_exactly(sock, 10)
    assert reply[1] == 0, f"reply {reply[1]}"
    return sock


async def open_tunnel_async(
    proxy: Proxy, target_port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(_greeting(proxy.login))
    await reader.readexactly(2)
    if proxy.login:
        writer.write(_credentials(proxy.login))
        if await reader.readexactly(2) != b"\x01\x00":
            raise ConnectionError("login failed")
    writer.write(_connect_request(target_port))
    reply = await reader.readexactly(10)
    if reply[1] != 0:
        raise ConnectionError(f"reply {reply[1]}")
    return reader, writer


# The three measurements.


def measure_throughput(proxy: Proxy, target_port: int, megabytes: int) -> float:
    size = megabytes * 1_000_000
    results = []
    buffer = bytearray(256 * 1024)
    for _ in range(3):
        sock = open_tunnel(proxy, target_port)
        started = time.perf_counter()
        sock.sendall(b"D" + struct.pack("!Q", size))
        received = 0
        while received < size:
            count = sock.recv_into(buffer)
            if count == 0:
                raise ConnectionError(f"{proxy.name}: closed after {received} bytes")
            received += count
        results.append(size / (time.perf_counter() - started) / 1e6)
        sock.close()
    return statistics.median(results)


async def measure_connection_rate(proxy: Proxy, target_port: int, seconds: float) -> float:
    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            try:
                _, writer = await open_tunnel_async(proxy, target_port)
                writer.close()
                done += 1
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(RATE_CLIENTS)))
    if errors:
        print(f"  {proxy.name}: {errors} failed handshakes in the rate test", file=sys.stderr)
    return done / (time.perf_counter() - started)


async def measure_concurrent_tunnels(proxy: Proxy, target_port: int, count: int) -> tuple[int, int]:
    """Open `count` tunnels, hold them all, echo through each; return (held, failed)."""
    opening = asyncio.Semaphore(64)
    tunnels: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0

    async def open_one() -> None:
        nonlocal failed
        async with opening:
            try:
                reader, writer = await asyncio.wait_for(open_tunnel_async(proxy, target_port), 30)
                writer.write(b"E")
                tunnels.append((reader, writer))
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                failed += 1

    await asyncio.gather(*(open_one() for _ in range(count)))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            writer.write(b"ping")
            return await asyncio.wait_for(reader.readexactly(4), 30) == b"ping"
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return False

    results = await asyncio.gather(*(echo(reader, writer) for reader, writer in tunnels))
    held = sum(results)
    for _, writer in tunnels:
        writer.close()
    return held, failed + (len(results) - held)


# Starting the proxies.


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def running(
    command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run the command with its output in `log` until the block ends; wait for its port."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, env=env)
        try:
            wait_for_port(port, process)
            yield
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()


@contextlib.contextmanager
def llmcloud_proxy(work: Path) -> Iterator[Proxy]:
    from llmcloud.auth.accounts import create_account
    from llmcloud.db import open_database

    url = f"sqlite:///{work / 'llmcloud.db'}"
    database = open_database(url)
    database.upgrade()
    create_account(database, USERNAME, PASSWORD, role="admin")
    database.dispose()
    port = free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(work / "config"),
        "LLMCLOUD_DATA_DIR": str(work / "data"),
        "LLMCLOUD_DATABASE_URL": url,
        "LLMCLOUD_SOCKS_PORT": str(port),
        "LLMCLOUD_SOCKS_ALLOW": f'["{TARGET_HOST}"]',
        "LLMCLOUD_SOCKS_MAX_CONNECTIONS": "5000",
        "LLMCLOUD_SOCKS_MAX_TUNNELS_PER_USER": "5000",
    }
    command = [sys.executable, "-m", "llmcloud", "socks", "serve"]
    with running(command, port, env=env, log=work / "llmcloud-socks.log"):
        yield Proxy("llmcloud socks", port, (USERNAME, PASSWORD))


@contextlib.contextmanager
def microsocks_proxy(work: Path) -> Iterator[Proxy]:
    port = free_port()
    command = ["microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", USERNAME, "-P", PASSWORD]
    with running(command, port, log=work / "microsocks.log"):
        yield Proxy("microsocks", port, (USERNAME, PASSWORD))


@contextlib.contextmanager
def ssh_dynamic_forward(work: Path) -> Iterator[Proxy]:
    ssh_dir = work / "ssh"
    ssh_dir.mkdir()

    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / name)], check=True
        )
    shutil.copy(ssh_dir / "user_key.pub", ssh_dir / "authorized_keys")

    sshd_port = free_port()
    config = ssh_dir / "sshd_config"
    config.write_text(
        f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {ssh_dir / 'host_key'}\n"
        f"PidFile {ssh_dir / 'sshd.pid'}\nAuthorizedKeysFile {ssh_dir / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "LogLevel ERROR\n"
    )

    # Debian's sshd refuses to start without its privilege separation folder.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    socks_port = free_port()
    ssh = [
        "ssh", "-N", "-D", f"127.0.0.1:{socks_port}", "-i", str(ssh_dir / "user_key"),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
        "-p", str(sshd_port), f"{getpass.getuser()}@127.0.0.1",
    ]  # fmt: skip

    sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
    with (
        running(sshd, sshd_port, log=work / "sshd.log"),
        running(ssh, socks_port, log=work / "ssh.log"),
    ):
        yield Proxy("ssh -D", socks_port, None)


def benchmark(proxy: Proxy, target_port: int, args: argparse.Namespace) -> list[str]:
    print(f"measuring {proxy.name}", file=sys.stderr)
    throughput = measure_throughput(proxy, target_port, args.megabytes)
    rate = asyncio.run(measure_connection_rate(proxy, target_port, args.seconds))
    held, failed = asyncio.run(measure_concurrent_tunnels(proxy, target_port, args.tunnels))
    return [
        proxy.name,
        f"{throughput:.0f}",
        f"{rate:.0f}",
        f"{held} of {args.tunnels}",
        str(failed),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1000, help="Size of each download.")
    parser.add_argument("--tunnels", type=int, default=1000, help="Tunnels held at once.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of the rate test.")
    args = parser.parse_args()

    listener = socket.create_server((TARGET_HOST, 0), backlog=4096)
    target_port = listener.getsockname()[1]
    target = multiprocessing.get_context("fork").Process(
        target=serve_target, args=(listener,), daemon=True
    )
    target.start()
    rows = []
    with tempfile.TemporaryDirectory(prefix="socks-bench-") as folder:
        work = Path(folder)
        for start in (llmcloud_proxy, microsocks_proxy, ssh_dynamic_forward):
            with start(work) as proxy:
                rows.append(benchmark(proxy, target_port, args))
    target.terminate()

    python = platform.python_version()
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {python}")
    print(f"Download {args.megabytes} MB, {args.tunnels} tunnels, rate test {args.seconds:g} s\n")
    header = ["Proxy", "Throughput, one tunnel (MB/s)", "Handshakes + CONNECT per s",
              "Tunnels held", "Failed"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
