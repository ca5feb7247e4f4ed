"""`llmcloud up` as a real process: start-up, the printed URL, clean stops, a dying part.

Every test passes free loopback ports for the engine, the web app and the SOCKS proxy, because
the default ports may be taken on the machine that runs the tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from llmcloud.cli import app
from llmcloud.cli.up import Part, Supervisor, lock_data_dir, parts_for
from llmcloud.settings import Settings
from llmcloud.socks.protocol import Reply

STARTUP_SECONDS = 120
ADMIN = "alice"
PASSWORD = "correct horse battery"


def free_ports(count: int) -> list[int]:
    """Return distinct free loopback ports; the sockets stay open until all are picked."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    web_port: int
    engine_port: int
    socks_port: int
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

    def child_pids(self) -> list[int]:
        """Return the pids of all child processes of `up`."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent_pid(entry) == self.process.pid:
                pids.append(int(entry.name))
        return pids

    def sign_up_admin(self) -> None:
        """Create the first account through the web app's sign-up form; it becomes the admin."""
        form = {"username": ADMIN, "password": PASSWORD, "password_confirm": PASSWORD}
        response = httpx.post(
            self.url + "/signup",
            data=form,
            headers={"Origin": self.url},
            verify=str(self.data_dir / "certs" / "ca.pem"),
        )
        assert response.status_code == 303, response.text


def _parent_pid(proc_entry: Path) -> int | None:
    try:
        status = (proc_entry / "status").read_text()
    except OSError:
        return None
    line = next(line for line in status.splitlines() if line.startswith("PPid:"))
    return int(line.split()[1])


StartUp = Callable[..., UpProcess]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[StartUp]:
    """A factory that starts `llmcloud up`, on free ports unless given; other keyword arguments
    become LLMCLOUD_* environment variables, such as socks_in_up="false"."""
    processes: list[subprocess.Popen[str]] = []

    def start(
        web_port: int | None = None,
        engine_port: int | None = None,
        socks_port: int | None = None,
        **settings: str,
    ) -> UpProcess:
        free = free_ports(3)
        web_port = web_port or free[0]
        engine_port = engine_port or free[1]
        socks_port = socks_port or free[2]
        env = {
            **os.environ,
            "LLMCLOUD_DATA_DIR": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "LLMCLOUD_ENGINE_THREADS": "2",
            "LLMCLOUD_SOCKS_PORT": str(socks_port),
            **{f"LLMCLOUD_{name.upper()}": value for name, value in settings.items()},
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
        processes.append(process)
        output: list[str] = []
        assert process.stdout is not None
        reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        return UpProcess(process, web_port, engine_port, socks_port, output, tmp_path / "data")

    yield start
    # Stop `up` the way an operator would, so that it stops its children; if it hangs, kill its
    # whole process group, children included, so that no child outlives the test.
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def running_up(start_up: StartUp) -> UpProcess:
    return start_up()


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_prints_addresses_and_first_steps(running_up: UpProcess) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    printed = "".join(running_up.output)
    socks_port = running_up.socks_port
    assert f"running at {running_up.url}" in printed
    assert "create the first account" in printed
    assert f"listens on 127.0.0.1:{socks_port}" in printed
    assert "accounts with role admin" in printed
    assert "allows no destination until you list the internal hosts in socks_allow" in printed
    assert f"ssh -L {socks_port}:127.0.0.1:{socks_port}" in printed
    assert f"{running_up.url}/proxy.pac" in printed


def test_up_serves_web_app_and_engine(running_up: UpProcess) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    assert running_up.get("/healthz").json() == {"status": "ok"}
    assert running_up.get("/readyz").json()["backends"] == ["engine"]
    assert running_up.get("/signup").status_code == 200


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_cleanly_on_signal(running_up: UpProcess, stop_signal: signal.Signals) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    children = running_up.child_pids()
    assert len(children) == 3

    running_up.process.send_signal(stop_signal)

    assert running_up.process.wait(timeout=60) == 0
    assert not is_listening(running_up.web_port)
    assert not is_listening(running_up.engine_port)
    assert not is_listening(running_up.socks_port)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} still runs"


@pytest.mark.parametrize(
    ("command", "name", "port_attribute"),
    [
        ("engine", "engine", "engine_port"),
        ("socks", "SOCKS proxy", "socks_port"),
    ],
)
def test_up_restarts_dead_part(
    running_up: UpProcess, command: str, name: str, port_attribute: str
) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    dead = running_up.child_pid(command)

    os.kill(dead, signal.SIGKILL)

    running_up.wait_for_line(f"the {name} exited unexpectedly with status -9; starting it again")
    running_up.wait_for_line(f"the {name} is serving again")
    assert running_up.process.poll() is None
    assert running_up.child_pid(command) != dead
    assert is_listening(getattr(running_up, port_attribute))
    assert running_up.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("setting", "remedy"),
    [
        ("web_port", "pick another port with --port (setting web_port)"),
        ("engine_port", "pick another port with --engine-port (setting engine_port)"),
        ("socks_port", "set socks_port to a free port, or socks_in_up to false"),
    ],
)
def test_up_rejects_port_in_use(start_up: StartUp, setting: str, remedy: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other_program:
        busy_port = other_program.getsockname()[1]
        up = start_up(**{setting: busy_port})
        assert up.process.wait(timeout=60) == 2
    up.wait_for_line(f"port {busy_port} on 127.0.0.1 is already in use", seconds=5)
    up.wait_for_line(remedy, seconds=5)
    assert not is_listening(up.engine_port)


def test_up_socks_proxies_for_admin(start_up: StartUp) -> None:
    with EchoServer() as destination:
        up = start_up(socks_allow=json.dumps([f"127.0.0.1:{destination.port}"]))
        up.wait_for_line("Press Ctrl-C")
        assert socks_greeting(up.socks_port) == bytes([5, 2])
        assert socks_login(up.socks_port) is None

        up.sign_up_admin()
        client = socks_login(up.socks_port)
        assert client is not None
        with client:
            assert socks_connect(client, "127.0.0.1", destination.port) == Reply.SUCCEEDED
            client.sendall(b"ping")
            assert receive_exactly(client, 4) == b"ping"

        denied = socks_login(up.socks_port)
        assert denied is not None
        with denied:
            reply = socks_connect(denied, "127.0.0.1", up.web_port)
            assert reply == Reply.NOT_ALLOWED_BY_RULESET


def test_up_socks_empty_allow_list_denies(running_up: UpProcess) -> None:
    running_up.wait_for_line("Press Ctrl-C")
    running_up.sign_up_admin()
    client = socks_login(running_up.socks_port)
    assert client is not None
    with client:
        reply = socks_connect(client, "127.0.0.1", running_up.web_port)
        assert reply == Reply.NOT_ALLOWED_BY_RULESET


def test_up_without_socks_starts_no_proxy(start_up: StartUp) -> None:
    up = start_up(socks_in_up="false")
    up.wait_for_line("Press Ctrl-C")
    printed = "".join(up.output)
    assert len(up.child_pids()) == 2
    assert not is_listening(up.socks_port)
    assert "SOCKS proxy listening" not in printed
    assert "SOCKS5 proxy for admins" not in printed


class EchoServer:
    """A loopback TCP server that sends every byte back, as the proxy's destination."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(65536):
                    connection.sendall(data)


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return data


def socks_greeting(port: int) -> bytes:
    """Send a SOCKS5 greeting offering username/password and return the method selection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(bytes([5, 1, 2]))
        return receive_exactly(client, 2)


def socks_login(port: int, username: str = ADMIN, password: str = PASSWORD) -> socket.socket | None:
    """Log in to the proxy (RFC 1929); return the connection, or None when the login failed."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(bytes([5, 1, 2]))
    assert receive_exactly(client, 2) == bytes([5, 2])
    user, secret = username.encode(), password.encode()
    client.sendall(bytes([1, len(user)]) + user + bytes([len(secret)]) + secret)
    status = receive_exactly(client, 2)
    if status == bytes([1, 0]):
        return client
    client.close()
    return None


def socks_connect(client: socket.socket, host: str, port: int) -> int:
    """Send a CONNECT request for an IPv4 destination and return the reply code."""
    client.sendall(bytes([5, 1, 0, 1]) + socket.inet_aton(host) + port.to_bytes(2, "big"))
    reply = receive_exactly(client, 10)
    return reply[1]


def test_parts_for_leaves_out_socks_when_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, socks_in_up=False)
    assert [part.name for part in parts_for(settings)] == ["engine", "web app"]


@pytest.mark.parametrize(
    ("setting", "expected"), [(None, "true"), (True, "true"), (False, "false")]
)
def test_parts_for_engine_background(tmp_path: Path, setting: bool | None, expected: str) -> None:
    engine, web = parts_for(
        Settings(data_dir=tmp_path, socks_in_up=False, engine_background=setting)
    )
    assert engine.env["LLMCLOUD_ENGINE_BACKGROUND"] == expected
    # The web app's backups follow the engine into the idle class.
    assert web.env["LLMCLOUD_ENGINE_BACKGROUND"] == expected


def test_parts_for_socks_metrics_port(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, socks_port=11080, socks_metrics_port=19108)
    _engine, web, socks = parts_for(settings)
    metrics_url = web.env["LLMCLOUD_MONITORING_SOCKS_METRICS_URL"]
    assert metrics_url == "http://127.0.0.1:19108/metrics"
    assert [listener.port for listener in socks.listeners] == [11080, 19108]
    assert socks.env["LLMCLOUD_SOCKS_PORT"] == "11080"
    assert socks.argv[-2:] == ["socks", "serve"]


# The supervisor with stand-in children: a crash loop and a stop during the restart delay.


@dataclass(frozen=True)
class AlwaysReady:
    target: str = "nothing"

    def passes(self) -> bool:
        return True


def short_lived_part(seconds: float) -> Part:
    """A part whose process exits with status 3 after `seconds`."""
    code = f"import time, sys; time.sleep({seconds}); sys.exit(3)"
    return Part("flaky part", [sys.executable, "-c", code], {}, [], AlwaysReady())


def test_supervisor_gives_up_on_crash_loop() -> None:
    supervisor = Supervisor([short_lived_part(0.1)], restart_limit=3, restart_delay=0.05)

    assert supervisor.run() == 1
    assert supervisor.failure is not None
    assert supervisor.failure.startswith("the flaky part exited unexpectedly 3 times within 300 s")
    assert "the last time with status 3" in supervisor.failure


def test_supervisor_restart_forgets_old_exits() -> None:
    # Exits further apart than the window never add up to the limit.
    part = short_lived_part(0.2)
    supervisor = Supervisor([part], restart_limit=2, restart_window=0.1, restart_delay=0.01)
    stopper = threading.Timer(2.0, supervisor.stop_requested.set)
    stopper.start()
    try:
        assert supervisor.run() == 0
    finally:
        stopper.cancel()
    assert supervisor.failure is None
    assert len(part.exits) == 1


def test_supervisor_stop_during_restart_delay() -> None:
    supervisor = Supervisor([short_lived_part(0.05)], restart_delay=60)
    stopper = threading.Timer(1.0, supervisor.stop_requested.set)
    stopper.start()
    try:
        assert supervisor.run() == 0
    finally:
        stopper.cancel()
    assert supervisor.failure is None


def test_second_up_on_one_data_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with lock_data_dir(tmp_path / "data") as first:
        with pytest.raises(typer.Exit) as refused:
            lock_data_dir(tmp_path / "data")
        assert first.name == str(tmp_path / "data" / "up.lock")
    assert refused.value.exit_code == 2
    message = capsys.readouterr().err
    assert f"another llmcloud up (process {os.getpid()}) is already running" in message
    assert "LLMCLOUD_DATA_DIR" in message
    with lock_data_dir(tmp_path / "data"):
        pass


def test_data_dir_that_cannot_be_made_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(typer.Exit) as refused:
        lock_data_dir(tmp_path / "file" / "data")
    assert refused.value.exit_code == 2
    message = capsys.readouterr().err
    assert f"cannot use the data dir {tmp_path / 'file' / 'data'}: Not a directory" in message


@pytest.mark.parametrize("option", ["--port", "--engine-port"])
def test_up_rejects_port_out_of_range_naming_option(option: str) -> None:
    result = CliRunner().invoke(app, ["up", option, "80000"])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert "65535" in result.output
