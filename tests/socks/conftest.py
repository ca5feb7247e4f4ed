"""A SOCKS proxy run in a thread, loopback destinations and llmcloud accounts to log in with.

The allowed destination listens on 127.0.0.2; 127.0.0.3 is on no allow list.
Accounts live in a SQLite database and use a cheap argon2 hasher.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from llmcloud.auth.accounts import create_account
from llmcloud.db import Database, open_database
from llmcloud.db.testing import prepare_database
from llmcloud.socks.acl import AllowList
from llmcloud.socks.auth import AccountAuthenticator, Authenticator
from llmcloud.socks.server import ProxyConfig, SocksServer
from llmcloud.socks.tunnel import Resolver, resolve_name

ALLOWED_HOST = "127.0.0.2"
DENIED_HOST = "127.0.0.3"
ADMIN = "alice"
PLAIN_USER = "bob"
PASSWORD = "correct horse battery"
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PAGE_BODY = b"<html><head><title>internal page</title></head><body>grafana</body></html>"


class PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE_BODY)))
        self.end_headers()
        self.wfile.write(PAGE_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class PageServer:
    """An HTTP server returning PAGE_BODY, run in a thread."""

    def __init__(self, host: str) -> None:
        self.server = ThreadingHTTPServer((host, 0), PageHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoServer:
    """A TCP server sending every byte back, run in a thread."""

    def __init__(self, host: str) -> None:
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def stop(self) -> None:
        self.listener.close()


class RunningProxy:
    """A SocksServer on its own event loop in a thread."""

    def __init__(
        self,
        config: ProxyConfig,
        authenticator: Authenticator | None,
        resolver: Resolver = resolve_name,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(self._create, config, authenticator, resolver)
        self.host, self.port = self.server.address

    async def _create(
        self, config: ProxyConfig, authenticator: Authenticator | None, resolver: Resolver
    ) -> SocksServer:
        server = SocksServer(config, authenticator, resolver)
        await server.start()
        return server

    def call(self, function: Any, *args: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(function(*args), self.loop)
        return future.result(timeout=30)

    def open_task_count(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return int(self.call(count))

    def stop(self) -> None:
        self.call(self.server.close, 1.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def page_server() -> Iterator[PageServer]:
    server = PageServer(ALLOWED_HOST)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def denied_page_server() -> Iterator[PageServer]:
    server = PageServer(DENIED_HOST)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer(ALLOWED_HOST)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def accounts_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("socks-db") / "llmcloud.db"
    database = open_database(f"sqlite:///{path}")
    prepare_database(database)
    create_account(database, ADMIN, PASSWORD, role="admin", hasher=CHEAP_HASHER)
    create_account(database, PLAIN_USER, PASSWORD, role="user", hasher=CHEAP_HASHER)
    yield database
    database.dispose()


def proxy_config(**overrides: Any) -> ProxyConfig:
    config = ProxyConfig(
        host="127.0.0.1",
        port=0,
        allow_list=AllowList.parse([ALLOWED_HOST, "*.allowed.test"]),
        handshake_timeout=2.0,
        connect_timeout=2.0,
    )
    return replace(config, **overrides)


@pytest.fixture
def make_proxy(accounts_database: Database) -> Iterator[Any]:
    """A factory of started proxies; keyword arguments override ProxyConfig fields."""
    proxies: list[RunningProxy] = []

    def make(resolver: Resolver = resolve_name, **overrides: Any) -> RunningProxy:
        authenticator = AccountAuthenticator(accounts_database, ["admin"], hasher=CHEAP_HASHER)
        proxy = RunningProxy(proxy_config(**overrides), authenticator, resolver)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def proxy(make_proxy: Any) -> RunningProxy:
    started: RunningProxy = make_proxy()
    return started


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
