"""OpenID Connect log-in in headless Chromium, against the real oidc-provider on loopback.

The web app runs in uvicorn and the provider in node, both on 127.0.0.1.
Every request the browser makes to another host is aborted, so the test
cannot reach the internet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Route, expect

from llmcloud.auth.provider_config import OidcProvider
from llmcloud.web import create_app
from tests.conftest import RunningServer
from tests.gateway.fake_backend import FakeBackend
from tests.oidc.server import OidcProviderProcess
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, needs_chromium, web_settings
from tests.web.test_oauth_oidc import ACCOUNTS, CLIENT_ID, CLIENT_SECRET, PROVIDER

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def web_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("oauth-browser")
    backend = FakeBackend((FAKE_MODEL,)).start()
    app = create_app(web_settings(data_dir / "data", backend.url), hasher=CHEAP_HASHER)
    server = RunningServer(app)

    # The provider needs the app's redirect URI, and the app the provider's issuer.
    client = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{server.url}/auth/{PROVIDER}/callback"],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }
    provider = OidcProviderProcess(data_dir, [client], ACCOUNTS).start()

    oidc = OidcProvider(
        name=PROVIDER,
        display_name="Test IdP",
        issuer=provider.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,  # type: ignore[arg-type]
        scopes=["openid", "email", "profile", "groups"],
        user_groups=["llmcloud-users"],
    )
    state = app.state.web
    state.settings = state.settings.model_copy(
        update={"public_url": server.url, "auth_oidc_providers": [oidc]}
    )

    server.start()
    yield server.url
    server.stop()
    provider.stop()
    backend.stop()


def only_loopback(route: Route) -> None:
    if route.request.url.startswith("http://127.0.0.1:"):
        route.continue_()
    else:
        route.abort()


def test_oidc_login_logout_login_in_browser(browser: Browser, web_url: str) -> None:
    context = browser.new_context(base_url=web_url)
    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto("/login")
    page.get_by_role("link", name="Log in with Test IdP").click()

    expect(page.get_by_role("heading", name="Test provider log-in")).to_be_visible()
    page.get_by_label("Login").fill("alice")
    page.get_by_label("Password").fill(ACCOUNTS["alice"]["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{web_url}/chats")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{web_url}/login")
    # The provider remembers its own session, so the second log-in needs no form.
    page.get_by_role("link", name="Log in with Test IdP").click()
    expect(page).to_have_url(f"{web_url}/chats")
    context.close()
