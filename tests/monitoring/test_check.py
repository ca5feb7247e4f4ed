"""`llmcloud check` against a running web app, a fake backend and a SOCKS stand-in."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from llmcloud.cli import app as cli_app
from llmcloud.monitoring.probes import Status, probe_database, run_probes, serves_tls, worst
from llmcloud.settings import Settings
from llmcloud.tls.serving import localhost_certificate
from llmcloud.web import create_app
from tests.conftest import RunningServer
from tests.db.read_only import read_only
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, web_settings


class SocksStandIn:
    """Answers a SOCKS5 greeting with 'username/password' (05 02), then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                connection.recv(3)
                connection.sendall(b"\x05\x02")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def deployment(tmp_path: Path, fake_backend: FakeBackend) -> Iterator[dict[str, object]]:
    socks = SocksStandIn()
    settings = web_settings(tmp_path / "data", fake_backend.url)
    server = RunningServer(create_app(settings, hasher=CHEAP_HASHER)).start()
    overrides: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "gateway_backends": [{"name": "fake", "kind": "openai", "base_url": fake_backend.url}],
        "web_host": "127.0.0.1",
        "web_port": server.port,
        "socks_host": "127.0.0.1",
        "socks_port": socks.port,
        "socks_allow": ["10.0.0.0/8"],
    }
    yield overrides
    server.stop()
    socks.close()


def by_name(results: list[object]) -> dict[str, Status]:
    return {result.name: result.status for result in results}  # type: ignore[attr-defined]


def test_check_reports_each_part(deployment: dict[str, object]) -> None:
    from llmcloud.settings import Settings

    results = run_probes(Settings(**deployment))  # type: ignore[arg-type]
    statuses = by_name(results)

    assert statuses["login page"] == Status.OK
    assert statuses["database"] == Status.OK
    assert statuses["backend fake"] == Status.OK
    assert statuses[f"SOCKS proxy 127.0.0.1:{deployment['socks_port']}"] == Status.OK
    assert statuses["disk free"] in (Status.OK, Status.WARNING, Status.CRITICAL)
    # No backup ran in this deployment, so its age is a warning.
    assert statuses["last backup"] == Status.WARNING


def test_check_cli_json_and_exit_code(
    deployment: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in deployment.items():
        encoded = json.dumps(value) if isinstance(value, list) else str(value)
        monkeypatch.setenv(f"LLMCLOUD_{name.upper()}", encoded)

    result = CliRunner().invoke(cli_app, ["check", "--json"])

    report = json.loads(result.stdout)
    assert result.exit_code == 1
    assert report["status"] == "warning"
    assert {"name": "login page", "status": "ok"}.items() <= report["checks"][0].items()


def test_check_reports_read_only_database(tmp_path: Path, fake_backend: FakeBackend) -> None:
    app = create_app(web_settings(tmp_path / "data", fake_backend.url), hasher=CHEAP_HASHER)
    server = RunningServer(app).start()
    database = app.state.web.db
    try:
        with read_only(f"sqlite:///{tmp_path / 'data' / 'llmcloud.db'}", database):
            result = probe_database(server.url)
    finally:
        server.stop()

    assert result.status == Status.CRITICAL
    assert f"database {database.safe_url} is read-only" in result.detail


def test_check_reports_unreachable_parts_critical(tmp_path: Path) -> None:
    from llmcloud.settings import Settings

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    settings = Settings(
        data_dir=tmp_path,
        web_port=port,
        socks_port=port,
        gateway_backends=[
            {"name": "gone", "kind": "ollama", "base_url": f"http://127.0.0.1:{port}"}
        ],  # type: ignore[list-item]
    )

    results = run_probes(settings)

    assert worst(results) == Status.CRITICAL
    assert by_name(results)["backend gone"] == Status.CRITICAL
    assert by_name(results)["login page"] == Status.CRITICAL


class HttpsServer(RunningServer):
    """The web app over HTTPS with the internal CA's localhost certificate, as `up` serves it."""

    def __init__(self, app: object, cert: Path, key: Path) -> None:
        super().__init__(app)
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            log_config=None,
            access_log=False,
            lifespan="on",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})


def test_check_cli_finds_https_of_up(
    tmp_path: Path, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    settings = web_settings(data_dir, fake_backend.url)
    files = localhost_certificate(settings)
    server = HttpsServer(create_app(settings, hasher=CHEAP_HASHER), files.cert, files.key)
    server.start()
    monkeypatch.setenv("LLMCLOUD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LLMCLOUD_WEB_HOST", "127.0.0.1")
    monkeypatch.setenv("LLMCLOUD_WEB_PORT", str(server.port))
    backends = [{"name": "fake", "kind": "openai", "base_url": fake_backend.url}]
    monkeypatch.setenv("LLMCLOUD_GATEWAY_BACKENDS", json.dumps(backends))

    try:
        result = CliRunner().invoke(cli_app, ["check", "--json"])
    finally:
        server.stop()

    statuses = {check["name"]: check["status"] for check in json.loads(result.stdout)["checks"]}
    assert statuses["login page"] == "ok"
    assert statuses["certificate"] == "ok"
    assert statuses["backend fake"] == "ok"
    assert not any(name.startswith("SOCKS proxy") for name in statuses)
    assert result.exit_code == 1


def test_serves_tls_false_for_plain_http(deployment: dict[str, object]) -> None:
    assert not serves_tls("127.0.0.1", int(str(deployment["web_port"])))


def test_check_skips_socks_without_allow_list(deployment: dict[str, object]) -> None:
    settings = Settings(**{**deployment, "socks_allow": []})  # type: ignore[arg-type]

    names = [result.name for result in run_probes(settings)]

    assert "login page" in names
    assert not any(name.startswith("SOCKS proxy") for name in names)
