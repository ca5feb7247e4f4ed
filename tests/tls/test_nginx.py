"""`llmcloud nginx-config` checked by Debian's nginx, then carrying real traffic on loopback.

nginx terminates TLS with a certificate from the internal CA and proxies to
the web app, whose gateway streams from a fake backend that sends one token
every half second. The clients measure when each token arrives against
when the backend sent it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as websocket_connect

import tests.gateway.fake_backend as fake_backend_module
from llmcloud.auth import accounts, api_keys
from llmcloud.db.models import Role
from llmcloud.settings import Settings
from llmcloud.tls.ca import CAPaths, issue_certificate
from llmcloud.tls.nginx import NginxOptions, render_nginx_config
from llmcloud.tls.serving import wrap_for_https
from llmcloud.web import create_app
from llmcloud.web.app import max_body_bytes
from llmcloud.web.deps import WebState
from tests.conftest import RunningServer
from tests.gateway.fake_backend import FakeBackend
from tests.tls.conftest import client_context, free_port
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, PASSWORD, web_settings

TOKEN_INTERVAL = 0.5
MAX_TOKEN_DELAY = 0.3
SILENCE_SECONDS = 150.0
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class TimedBackend(FakeBackend):
    """The fake backend, with a pause before the first token and a record of send times."""

    def __init__(self) -> None:
        super().__init__((FAKE_MODEL,))
        self.first_token_delay = 0.0
        self.sent_at: dict[str, float] = {}

    async def _send_tokens(self, writer: Any, shape: Any, hangup: Any) -> None:
        if self.first_token_delay:
            await asyncio.wait([hangup], timeout=self.first_token_delay)
        await super()._send_tokens(writer, shape, hangup)


@dataclass
class Nginx:
    """A running nginx in front of one web app, and that app's state."""

    process: subprocess.Popen[bytes]
    https_port: int
    http_port: int
    prefix: Path
    web: WebState
    web_url: str

    @property
    def url(self) -> str:
        return f"https://localhost:{self.https_port}"


def nginx_main_config(prefix: Path, site: Path) -> str:
    """Return a main nginx.conf that runs unprivileged files under `prefix` and includes `site`."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {prefix / "access.log"};
{temp}
    include {site};
}}
"""


def nginx_command(prefix: Path, *args: str) -> list[str]:
    return [
        "nginx",
        "-p",
        str(prefix),
        "-e",
        str(prefix / "error.log"),
        "-c",
        str(prefix / "nginx.conf"),
        *args,
    ]


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[TimedBackend]:
    backend = TimedBackend()
    backend.token_interval = TOKEN_INTERVAL
    backend.tokens = ["one", " two", " three", " four", " five"]
    original = fake_backend_module._send_chunk

    async def send_and_record(writer: Any, line: bytes) -> None:
        await original(writer, line)
        for token in backend.tokens:
            if json.dumps(token)[1:-1].encode() in line and token not in backend.sent_at:
                backend.sent_at[token] = time.monotonic()

    monkeypatch.setattr(fake_backend_module, "_send_chunk", send_and_record)
    backend.start()
    yield backend
    backend.stop()


@pytest.fixture
def nginx(tmp_path: Path, backend: TimedBackend) -> Iterator[Nginx]:
    if shutil.which("nginx") is None:
        pytest.skip("Debian package nginx is not installed (scripts/install-test-packages)")
    https_port, http_port = free_port(), free_port()
    settings = web_settings(
        tmp_path / "data",
        backend.url,
        public_url=f"https://localhost:{https_port}",
        gateway_first_token_timeout=SILENCE_SECONDS + 60,
    )
    app = create_app(settings, hasher=CHEAP_HASHER)
    server = RunningServer(wrap_for_https(app, settings)).start()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    pair = issue_certificate(_ca(tmp_path), "nginx", ["localhost"], lifetime_days=30)
    site = prefix / "llmcloud.conf"
    site.write_text(
        render_nginx_config(
            NginxOptions(
                server_names=["localhost"],
                upstreams=[f"127.0.0.1:{server.port}"],
                cert_file=pair.cert_path,
                key_file=pair.key_path,
                max_body_bytes=max_body_bytes(settings),
                https_listen=f"127.0.0.1:{https_port}",
                http_listen=f"127.0.0.1:{http_port}",
            )
        )
    )
    (prefix / "nginx.conf").write_text(nginx_main_config(prefix, site))
    check = subprocess.run(nginx_command(prefix, "-t"), capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(nginx_command(prefix, "-g", "daemon off;"))
    running = Nginx(process, https_port, http_port, prefix, app.state.web, server.url)
    _wait_for_port(running)
    yield running
    process.terminate()
    process.wait(10)
    server.stop()


def _ca(tmp_path: Path) -> Path:
    from llmcloud.tls.ca import init_ca

    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, lifetime_days=30)
    return ca_dir


def _wait_for_port(nginx: Nginx) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(nginx.url + "/healthz", verify=_trust(nginx), timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start:\n" + (nginx.prefix / "error.log").read_text())


def _trust(nginx: Nginx) -> ssl.SSLContext:
    return client_context(CAPaths(nginx.prefix.parent / "ca").cert)


def logged_in_client(nginx: Nginx) -> httpx.Client:
    """Sign up the first account (the admin) through nginx and return its client."""
    client = httpx.Client(base_url=nginx.url, verify=_trust(nginx), headers={"Origin": nginx.url})
    form = {"username": "admin", "password": PASSWORD, "password_confirm": PASSWORD}
    response = client.post("/signup", data=form)
    assert response.status_code == 303, response.text
    return client


def new_chat(client: httpx.Client) -> str:
    match = CSRF_FIELD.search(client.get("/chats").text)
    assert match is not None
    response = client.post("/chats", data={"csrf_token": match.group(1)})
    assert response.status_code == 303
    return str(response.headers["location"]).rsplit("/", 1)[-1]


def chat_over_sse(
    nginx: Nginx, timeout: float, base_url: str | None = None
) -> list[tuple[str, float]]:
    """Stream one chat completion through nginx; return the tokens and their arrival times."""
    user = accounts.create_account(nginx.web.db, f"user{time.monotonic_ns()}", None, role=Role.USER)
    key = api_keys.create_api_key(nginx.web.db, user.id, "nginx test").key
    body = {"model": FAKE_MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    received: list[tuple[str, float]] = []
    with httpx.stream(
        "POST",
        (base_url or nginx.url) + "/v1/chat/completions",
        json=body,
        headers=headers,
        verify=_trust(nginx),
        timeout=httpx.Timeout(10, read=timeout),
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[len("data: ") :])["choices"][0]["delta"]
            if delta.get("content"):
                received.append((delta["content"], time.monotonic()))
    return received


def chat_over_websocket(nginx: Nginx, timeout: float) -> list[tuple[str, float]]:
    """Send one prompt over the chat WebSocket through nginx; return tokens and arrival times."""
    client = logged_in_client(nginx)
    chat_id = new_chat(client)
    cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    url = f"wss://localhost:{nginx.https_port}/ws/chats/{chat_id}"
    received: list[tuple[str, float]] = []
    with websocket_connect(
        url,
        ssl=_trust(nginx),
        additional_headers={"Origin": nginx.url, "Cookie": cookies},
        open_timeout=30,
    ) as socket:
        socket.send(json.dumps({"type": "send", "content": "Hello", "model": FAKE_MODEL}))
        while True:
            message = json.loads(socket.recv(timeout=timeout))
            if message["type"] == "token":
                received.append((message["text"], time.monotonic()))
            if message["type"] in ("done", "error"):
                assert message["type"] == "done", message
                return received


def test_rendered_config_passes_nginx_check(nginx: Nginx) -> None:
    check = subprocess.run(
        nginx_command(nginx.prefix, "-t"), capture_output=True, text=True, check=False
    )
    assert "test is successful" in check.stderr


def test_nginx_streams_sse_tokens_as_sent(nginx: Nginx, backend: TimedBackend) -> None:
    received = chat_over_sse(nginx, timeout=10)
    assert [text for text, _ in received] == backend.tokens
    for text, arrived in received:
        assert arrived - backend.sent_at[text] < MAX_TOKEN_DELAY, text


def test_web_app_marks_stream_unbuffered(nginx: Nginx) -> None:
    user = accounts.create_account(nginx.web.db, "bob", None, role=Role.USER)
    key = api_keys.create_api_key(nginx.web.db, user.id, "header test").key
    body = {"model": FAKE_MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(
        nginx.web_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["x-accel-buffering"] == "no"


def test_nginx_websocket_tokens_arrive_as_sent(nginx: Nginx, backend: TimedBackend) -> None:
    received = chat_over_websocket(nginx, timeout=10)
    assert [text for text, _ in received] == backend.tokens
    for text, arrived in received:
        assert arrived - backend.sent_at[text] < MAX_TOKEN_DELAY, text


def test_nginx_hides_metrics(nginx: Nginx) -> None:
    response = httpx.get(nginx.url + "/metrics", verify=_trust(nginx))
    assert response.status_code == 404
    assert "nginx" in response.text


def test_nginx_redirects_http_to_https(nginx: Nginx) -> None:
    response = httpx.get(f"http://localhost:{nginx.http_port}/chats?x=1")
    assert response.status_code == 301
    assert response.headers["location"] == f"https://localhost:{nginx.https_port}/chats?x=1"


def test_nginx_forwards_acme_challenge_to_web_app(nginx: Nginx, tmp_path: Path) -> None:
    challenge = tmp_path / "data" / "certs" / "acme-challenges" / "token-1"
    challenge.parent.mkdir(parents=True)
    challenge.write_text("token-1.thumbprint")
    url = f"http://localhost:{nginx.http_port}/.well-known/acme-challenge/token-1"
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.text == "token-1.thumbprint"


def test_nginx_rejects_body_over_limit(nginx: Nginx) -> None:
    settings = Settings(data_dir=nginx.prefix)
    body = b"x" * (max_body_bytes(settings) + 1)
    response = httpx.post(nginx.url + "/login", content=body, verify=_trust(nginx))
    assert response.status_code == 413


# Takes about 150 seconds: the silence must outlast nginx's default 60-second proxy timeouts.
def test_nginx_waits_out_silence_before_first_token(nginx: Nginx, backend: TimedBackend) -> None:
    backend.first_token_delay = SILENCE_SECONDS
    received = chat_over_sse(nginx, timeout=SILENCE_SECONDS + 30)
    assert [text for text, _ in received] == backend.tokens
