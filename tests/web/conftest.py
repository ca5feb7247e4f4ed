"""Fixtures of the web app tests: an app on a fake model backend, and logged-in clients.

The app runs in-process through Starlette's TestClient, which also speaks
WebSocket. Its gateway routes to a fake backend on loopback
(tests/gateway/fake_backend.py), so answers are fixed and fast; the browser
test and the tests marked `model` use the real engine instead.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, sync_playwright

from llmcloud.settings import Settings
from llmcloud.web import create_app
from tests.conftest import scratch_postgres_or_skip
from tests.gateway.fake_backend import FakeBackend

ORIGIN = "http://testserver"
PASSWORD = "correct horse battery"
FAKE_MODEL = "fake-model"
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def web_settings(data_dir: Path, backend_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "gateway_backends": [{"name": "fake", "kind": "openai", "base_url": backend_url}],
        "gateway_health_interval": 0.2,
        "gateway_first_token_timeout": 5.0,
        "web_default_model": FAKE_MODEL,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own config file and LLMCLOUD_* variables out of the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("LLMCLOUD_") and name != "LLMCLOUD_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def fake_backend() -> Iterator[FakeBackend]:
    backend = FakeBackend((FAKE_MODEL,)).start()
    yield backend
    backend.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a SQLite file in the data dir, not yet created, or of a new PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'llmcloud.db'}"
        return
    with scratch_postgres_or_skip() as url:
        yield url


@pytest.fixture
def make_client(tmp_path: Path, fake_backend: FakeBackend) -> Iterator[Callable[..., TestClient]]:
    """A factory of started clients of one app; settings overrides go to the first call."""
    clients: list[TestClient] = []
    apps: dict[str, Any] = {}

    def make(**overrides: Any) -> TestClient:
        if "app" not in apps:
            settings = web_settings(tmp_path / "data", fake_backend.url, **overrides)
            apps["app"] = create_app(settings, hasher=CHEAP_HASHER)
        client = TestClient(apps["app"], headers={"Origin": ORIGIN}, follow_redirects=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def sign_up(client: TestClient, username: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/signup",
        data={"username": username, "password": password, "password_confirm": password},
    )


def log_in(client: TestClient, username: str, password: str = PASSWORD) -> Any:
    return client.post("/login", data={"username": username, "password": password})


def csrf_token(client: TestClient) -> str:
    """Read the session's CSRF token from a page, as a browser's form would carry it."""
    page = client.get("/chats")
    match = _CSRF_FIELD.search(page.text)
    assert match is not None, f"no CSRF field on /chats (HTTP {page.status_code})"
    return match.group(1)


def new_chat(client: TestClient) -> str:
    response = client.post("/chats", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    return str(response.headers["location"]).rsplit("/", 1)[-1]


@pytest.fixture
def admin(client: TestClient) -> TestClient:
    """The client logged in as the first account, which is the admin."""
    assert sign_up(client, "admin").status_code == 303
    return client


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing; scripts/install-test-packages installs Debian's chromium",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, one per test module."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
