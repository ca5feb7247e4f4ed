"""Provider log-ins shared by two web instances through a real Redis server on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from llmcloud.web import create_app
from llmcloud.web.oauth_pages import STATE_COOKIE
from tests.gateway.fake_backend import FakeBackend
from tests.oidc.github_fake import CLIENT_ID, CLIENT_SECRET, FakeGitHub
from tests.oidc.server import free_port
from tests.web.conftest import CHEAP_HASHER, ORIGIN, sign_up, web_settings
from tests.web.oauth_helpers import audit_events, start, users

REDIS_SERVER = shutil.which("redis-server")

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    assert REDIS_SERVER is not None
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


@pytest.fixture
def make_instance(
    tmp_path: Path, fake_backend: FakeBackend, github: FakeGitHub
) -> Iterator[Callable[[str], TestClient]]:
    """Start web instances on one data dir and database, as behind a load balancer."""
    clients: list[TestClient] = []

    def make(redis_url: str) -> TestClient:
        settings = web_settings(
            tmp_path / "data",
            fake_backend.url,
            public_url=ORIGIN,
            redis_url=redis_url,
            auth_github_client_id=CLIENT_ID,
            auth_github_client_secret=CLIENT_SECRET,
            auth_github_url=github.url,
            auth_github_api_url=github.url,
            auth_new_identity_role="user",
        )
        client = TestClient(
            create_app(settings, hasher=CHEAP_HASHER),
            headers={"Origin": ORIGIN},
            follow_redirects=False,
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


def test_callback_on_other_instance_logs_in(
    make_instance: Callable[[str], TestClient], redis_url: str
) -> None:
    first, second = make_instance(redis_url), make_instance(redis_url)
    assert sign_up(first, "admin").status_code == 303
    first.cookies.clear()
    callback = httpx.get(start(first, "github"), follow_redirects=False).headers["location"]
    second.cookies = first.cookies
    response = second.get(callback)
    assert response.status_code == 303
    assert response.headers["location"] == "/chats"
    assert users(first)[-1].username == "octocat"


def test_state_used_on_one_instance_fails_on_other(
    make_instance: Callable[[str], TestClient], redis_url: str
) -> None:
    first, second = make_instance(redis_url), make_instance(redis_url)
    assert sign_up(first, "admin").status_code == 303
    first.cookies.clear()
    callback = httpx.get(start(first, "github"), follow_redirects=False).headers["location"]
    state_cookie = first.cookies.get(STATE_COOKIE, path="/auth/")
    assert state_cookie is not None
    assert first.get(callback).status_code == 303
    second.cookies.set(STATE_COOKIE, state_cookie, path="/auth/")
    response = second.get(callback)
    assert response.status_code == 400
    assert audit_events(second)[-1].reason == "state_unknown"


def test_unreachable_redis_gives_503(make_instance: Callable[[str], TestClient]) -> None:
    client = make_instance(f"redis://127.0.0.1:{free_port()}/0")
    assert sign_up(client, "admin").status_code == 303
    client.cookies.clear()
    response = client.get("/auth/github/login")
    assert response.status_code == 503
    assert 'href="/auth/github/login"' in response.text
    assert audit_events(client)[-1].reason == "login_store_unavailable"
