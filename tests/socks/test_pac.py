"""The PAC file: its content, its route on the web app, and Chromium following it."""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright

from llmcloud.socks.acl import AllowList, IPAddress
from llmcloud.socks.pac import PAC_MEDIA_TYPE, render_pac
from llmcloud.web import create_app
from tests.conftest import RunningServer
from tests.gateway.fake_backend import FakeBackend
from tests.socks.conftest import ALLOWED_HOST, CHEAP_HASHER, DENIED_HOST, PageServer
from tests.socks.test_protocol import wait_for
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, FAKE_MODEL, web_settings

ALLOW = [f"{ALLOWED_HOST}:1-65535", "*.internal", "grafana.example.org", "[fd00::/8]:443"]


@pytest.fixture
def fake_backend() -> Iterator[FakeBackend]:
    backend = FakeBackend((FAKE_MODEL,)).start()
    yield backend
    backend.stop()


def test_pac_lists_networks_and_names() -> None:
    pac = render_pac(AllowList.parse(ALLOW), "127.0.0.1:1080")
    assert 'var PROXY = "SOCKS5 127.0.0.1:1080";' in pac
    assert 'var NAMES = ["grafana.example.org"];' in pac
    assert 'var SUFFIXES = [".internal"];' in pac
    assert f'var IPV4_NETWORKS = [["{ALLOWED_HOST}", "255.255.255.255"]];' in pac
    assert 'var IPV6_NETWORKS = ["fd00::/8"];' in pac


def test_pac_of_empty_list_sends_everything_direct() -> None:
    pac = render_pac(AllowList(()), "127.0.0.1:1080")
    assert "var NAMES = [];" in pac
    assert "var IPV4_NETWORKS = [];" in pac


def test_web_app_serves_pac_without_session(tmp_path: Path, fake_backend: FakeBackend) -> None:
    settings = web_settings(
        tmp_path / "data",
        fake_backend.url,
        socks_allow=ALLOW,
        socks_pac_proxy="proxy.internal:1080",
    )
    with TestClient(create_app(settings, hasher=CHEAP_HASHER)) as client:
        response = client.get("/proxy.pac")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(PAC_MEDIA_TYPE)
    assert '"SOCKS5 proxy.internal:1080"' in response.text
    assert '".internal"' in response.text


async def internal_names(name: str, port: int) -> list[IPAddress]:
    if name == "grafana.internal":
        return [ipaddress.ip_address(ALLOWED_HOST)]
    raise OSError(f"{name} is not an internal name of this test")


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing")
def test_chromium_follows_pac(
    tmp_path: Path,
    fake_backend: FakeBackend,
    make_proxy: Any,
    page_server: PageServer,
    denied_page_server: PageServer,
) -> None:
    # Chromium speaks no RFC 1929, so this proxy takes loopback clients without a login,
    # as it would behind an SSH tunnel. Chromium never proxies loopback addresses, so the
    # page is asked for by an internal name, which only the proxy's resolver can resolve.
    proxy = make_proxy(resolver=internal_names, allow_no_auth=True)
    settings = web_settings(
        tmp_path / "data",
        fake_backend.url,
        socks_allow=[ALLOWED_HOST, "*.internal"],
        socks_pac_proxy=f"127.0.0.1:{proxy.port}",
    )
    web = RunningServer(create_app(settings, hasher=CHEAP_HASHER)).start()
    args = [
        *CHROMIUM_ARGS,
        f"--proxy-pac-url={web.url}/proxy.pac",
    ]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
            page = browser.new_page()
            page.goto(f"http://grafana.internal:{page_server.port}/")
            assert page.title() == "internal page"
            stats = proxy.server.stats
            assert wait_for(lambda: stats.open_tunnels + stats.connections["completed"] >= 1)
            # Not on the list, so the PAC file sends it direct, past the proxy.
            page.goto(f"http://{DENIED_HOST}:{denied_page_server.port}/")
            assert page.content().count("grafana") == 1
            browser.close()
    finally:
        web.stop()
    assert proxy.server.stats.denied_destinations == 0
