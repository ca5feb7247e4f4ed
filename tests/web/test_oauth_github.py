"""GitHub log-in against a local server that implements GitHub's OAuth and REST endpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmcloud.auth.accounts import create_account, deactivate
from llmcloud.auth.pending_logins import PendingLogin
from llmcloud.db.models import Outcome, Role, User
from llmcloud.web.oauth_pages import STATE_COOKIE, pending_logins
from tests.oidc.github_fake import CLIENT_ID, CLIENT_SECRET, FakeGitHub
from tests.oidc.server import free_port
from tests.web.conftest import ORIGIN, PASSWORD, csrf_token, sign_up
from tests.web.oauth_helpers import (
    audit_events,
    callback_params,
    database,
    identities,
    session_count,
    start,
    users,
    with_params,
)


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


@pytest.fixture
def make_github_client(
    make_client: Callable[..., TestClient], github: FakeGitHub
) -> Callable[..., TestClient]:
    """A factory of clients of one app with GitHub configured; its first account is an admin."""
    github.login_as = "octocat"
    github.token_delay = 0.0

    def make(**overrides: Any) -> TestClient:
        settings = {
            "public_url": ORIGIN,
            "auth_github_client_id": CLIENT_ID,
            "auth_github_client_secret": CLIENT_SECRET,
            "auth_github_url": github.url,
            "auth_github_api_url": github.url,
            "auth_provider_timeout": 10.0,
            **overrides,
        }
        admin = make_client(**settings)
        assert sign_up(admin, "admin").status_code == 303
        return make_client()

    return make


def authorize(github: FakeGitHub, client: TestClient, login: str) -> str:
    """Start a GitHub log-in as `login` and return the callback URL that GitHub sends back."""
    github.login_as = login
    response = httpx.get(start(client, "github"), follow_redirects=False)
    assert response.status_code == 302
    return str(response.headers["location"])


def log_in(github: FakeGitHub, client: TestClient, login: str) -> httpx.Response:
    return client.get(authorize(github, client, login))


def test_github_login_creates_pending_account(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    response = log_in(github, client, "octocat")
    assert response.status_code == 303
    assert response.headers["location"] == "/pending"
    created = users(client)[-1]
    assert created.username == "octocat"
    assert created.role == Role.PENDING
    assert created.email == "octocat@example.org"
    assert session_count(client) == 1  # only the admin's
    event = audit_events(client)[-1]
    assert (event.outcome, event.reason, event.actor_user_id) == (
        Outcome.FAILURE,
        "pending",
        created.id,
    )


def test_github_link_to_pending_account_is_audited(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    existing = create_account(
        database(client), "person", None, role="pending", email="private.person@example.org"
    )
    assert log_in(github, client, "private").headers["location"] == "/pending"
    events = [(e.action, e.outcome, e.actor_user_id) for e in audit_events(client)]
    assert events[-2:] == [
        ("link", Outcome.SUCCESS, existing.id),
        ("login", Outcome.FAILURE, existing.id),
    ]


def test_github_login_keys_identity_by_numeric_id(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    assert log_in(github, client, "octocat").headers["location"] == "/chats"
    identity = identities(client)[0]
    assert identity.provider == "github"
    assert identity.subject == "1001"
    assert identity.email_verified is True


def test_github_login_sends_pkce_and_scopes(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    url = httpx.URL(start(client, "github"))
    assert url.params["code_challenge_method"] == "S256"
    assert len(url.params["code_challenge"]) == 43
    assert url.params["scope"] == "read:user user:email"
    assert url.params["redirect_uri"] == f"{ORIGIN}/auth/github/callback"
    assert url.params["state"]


def test_github_private_email_uses_primary_verified(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    log_in(github, client, "private")
    assert users(client)[-1].email == "Private.Person@Example.org"


def test_github_links_verified_email_ignoring_case(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    db = database(client)
    existing = create_account(db, "person", None, email="private.person@EXAMPLE.org")
    response = log_in(github, client, "private")
    assert response.headers["location"] == "/chats"
    assert identities(client)[0].user_id == existing.id
    assert len(users(client)) == 2
    assert [event.action for event in audit_events(client)] == ["link", "login"]


def test_github_unverified_email_never_links(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    db = database(client)
    create_account(db, "victim", None, role="admin", email="admin@example.org")
    response = log_in(github, client, "unverified")
    assert response.headers["location"] == "/pending"
    created = users(client)[-1]
    assert created.username == "unverified"
    assert created.email is None
    assert identities(client)[0].user_id == created.id


def test_github_org_member_may_log_in(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(
        auth_new_identity_role="user", auth_github_allowed_orgs=["llmcloud-org"]
    )
    assert "read:org" in httpx.URL(start(client, "github")).params["scope"]
    assert log_in(github, client, "member").headers["location"] == "/chats"


def test_github_team_member_may_log_in(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(
        auth_new_identity_role="user",
        auth_github_allowed_orgs=["llmcloud-org"],
        auth_github_allowed_teams=["other-org/chat-users"],
    )
    assert log_in(github, client, "teammate").headers["location"] == "/chats"


def test_github_non_member_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_github_allowed_orgs=["llmcloud-org"])
    response = log_in(github, client, "outsider")
    assert response.status_code == 403
    assert "not a member of an allowed organisation" in response.text
    assert len(users(client)) == 1
    assert audit_events(client)[-1].reason == "github_org_not_allowed"


def test_github_membership_checked_at_every_login(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    log_in(github, client, "outsider")
    app_settings = client.app.state.web.settings  # type: ignore[attr-defined]
    client.app.state.web.settings = app_settings.model_copy(  # type: ignore[attr-defined]
        update={"auth_github_allowed_orgs": ["llmcloud-org"]}
    )
    other = TestClient(client.app, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert log_in(github, other, "outsider").status_code == 403


def test_github_email_domain_allow_list(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(
        auth_new_identity_role="user", auth_allowed_email_domains=["corp.example"]
    )
    response = log_in(github, client, "octocat")
    assert response.status_code == 403
    assert audit_events(client)[-1].reason == "email_not_allowed"
    assert len(users(client)) == 1


def test_github_email_allow_list_ignores_case(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(
        auth_new_identity_role="user", auth_allowed_emails=["private.person@example.ORG"]
    )
    assert log_in(github, client, "private").headers["location"] == "/chats"


def test_github_unverified_email_fails_allow_list(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_allowed_email_domains=["example.org"])
    assert log_in(github, client, "unverified").status_code == 403


def test_github_signup_off_shows_page(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_provider_signup=False)
    response = log_in(github, client, "octocat")
    assert response.status_code == 403
    assert "sign-up through login providers is switched off" in response.text
    assert len(users(client)) == 1


def test_callback_without_state_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    response = client.get(with_params(callback, state=None))
    assert response.status_code == 400
    assert 'href="/auth/github/login"' in response.text
    assert audit_events(client)[-1].reason == "state_missing"
    assert len(users(client)) == 1


def test_callback_with_wrong_state_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    response = client.get(with_params(callback, state="forged-state"))
    assert response.status_code == 400
    assert audit_events(client)[-1].reason == "state_mismatch"
    assert len(users(client)) == 1


def test_callback_from_another_browser_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    attacker = TestClient(client.app, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert attacker.get(callback).status_code == 400
    assert len(users(client)) == 1


def test_callback_with_used_state_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    callback = authorize(github, client, "octocat")
    state_cookie = client.cookies.get(STATE_COOKIE, path="/auth/")
    assert client.get(callback).status_code == 303
    client.cookies.set(STATE_COOKIE, state_cookie or "", path="/auth/")
    response = client.get(callback)
    assert response.status_code == 400
    assert audit_events(client)[-1].reason == "state_unknown"


def test_callback_with_used_code_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    first = authorize(github, client, "octocat")
    assert client.get(first).status_code == 303
    client.post("/logout", data={"csrf_token": _csrf(client)})
    second = authorize(github, client, "octocat")
    replay = with_params(second, code=callback_params(first)["code"])
    response = client.get(replay)
    assert response.status_code == 400
    assert audit_events(client)[-1].reason == "code_rejected"
    assert session_count(client) == 1  # only the admin's


def test_callback_without_pkce_verifier_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    state = callback_params(callback)["state"]
    store = pending_logins_of(client)
    login = store.take(state)
    assert login is not None
    store.add(state, PendingLogin(**{**login.__dict__, "code_verifier": None}))
    response = client.get(callback)
    assert response.status_code == 400
    assert audit_events(client)[-1].reason == "pkce_verifier_missing"
    assert len(github.token_requests) == 0 or github.token_requests[-1]["code_verifier"]


def test_callback_with_provider_error_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    response = client.get(with_params(callback, code=None, error="access_denied"))
    assert response.status_code == 403
    assert "access_denied" in response.text
    assert audit_events(client)[-1].reason == "provider_denied"
    assert len(users(client)) == 1


def test_provider_timeout_gives_502(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_provider_timeout=0.3)
    callback = authorize(github, client, "octocat")
    github.token_delay = 1.0
    response = client.get(callback)
    assert response.status_code == 502
    assert audit_events(client)[-1].reason == "provider_timeout"
    assert len(users(client)) == 1


def test_provider_down_gives_502(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    closed = f"http://127.0.0.1:{free_port()}"
    web = client.app.state.web  # type: ignore[attr-defined]
    web.settings = web.settings.model_copy(update={"auth_github_url": closed})
    response = client.get(callback)
    assert response.status_code == 502
    assert audit_events(client)[-1].reason == "provider_unreachable"
    assert 'href="/auth/github/login"' in response.text


def test_logout_and_login_again(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    assert log_in(github, client, "octocat").headers["location"] == "/chats"
    assert client.post("/logout", data={"csrf_token": _csrf(client)}).status_code == 303
    assert client.get("/chats").status_code == 303
    assert log_in(github, client, "octocat").headers["location"] == "/chats"
    assert client.get("/chats").status_code == 200
    assert len(identities(client)) == 1


def test_audit_log_has_no_code_or_token(
    make_github_client: Callable[..., TestClient],
    github: FakeGitHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    caplog.set_level(logging.DEBUG)
    callback = authorize(github, client, "octocat")
    client.get(callback)
    code = callback_params(callback)["code"]
    state = callback_params(callback)["state"]
    audit_lines = [r.getMessage() for r in caplog.records if r.name == "llmcloud.audit"]
    assert audit_lines == ["login success provider=github user=2 subject=1001 reason=-"]
    server_lines = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("llmcloud")
    )
    for secret in (code, state, CLIENT_SECRET, *github.tokens):
        assert secret not in server_lines
    event = audit_events(client)[-1]
    assert (event.action, event.outcome, event.provider) == ("login", Outcome.SUCCESS, "github")


def test_admin_sees_and_unlinks_identities(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    log_in(github, client, "octocat")
    admin = TestClient(client.app, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert admin.post("/login", data={"username": "admin", "password": _password()}).is_redirect
    user_id = users(client)[-1].id
    assert f'href="/admin/users/{user_id}/identities"' in admin.get("/admin/users").text
    page = admin.get(f"/admin/users/{user_id}/identities")
    assert page.status_code == 200
    assert "1001" in page.text
    identity_id = identities(client)[0].id
    unlink_url = f"/admin/users/{user_id}/identities/{identity_id}/unlink"
    # The account has no password, so its only identity stays.
    assert admin.post(unlink_url, data={"csrf_token": _csrf(admin)}).status_code == 409
    with database(client).transaction() as session:
        stored = session.get(User, user_id)
        assert stored is not None
        stored.password_hash = "set-elsewhere"
    assert admin.post(unlink_url, data={"csrf_token": _csrf(admin)}).status_code == 303
    assert identities(client) == []
    assert audit_events(client)[-1].action == "unlink"


def test_non_admin_cannot_unlink(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    log_in(github, client, "octocat")
    assert client.get("/admin/users/2/identities").status_code == 403


def test_login_page_shows_provider_button(
    make_github_client: Callable[..., TestClient],
) -> None:
    client = make_github_client()
    page = client.get("/login")
    assert 'href="/auth/github/login?next=/chats"' in page.text
    assert "Log in with GitHub" in page.text


def test_password_form_can_be_switched_off(
    make_github_client: Callable[..., TestClient],
) -> None:
    client = make_github_client(auth_password_login=False)
    assert 'name="password"' not in client.get("/login").text
    response = client.post("/login", data={"username": "admin", "password": _password()})
    assert response.status_code == 403


def test_forwarded_headers_from_untrusted_address_change_nothing(
    make_github_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_github_client(trusted_proxies=["10.0.0.0/8"])
    outsider = TestClient(client.app, client=("198.51.100.7", 4000), follow_redirects=False)
    caplog.set_level(logging.INFO, logger="llmcloud.access")
    forged = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "203.0.113.9",
    }
    response = outsider.get("/auth/github/login", headers=forged)
    location = httpx.URL(response.headers["location"])
    assert location.params["redirect_uri"] == f"{ORIGIN}/auth/github/callback"
    assert "secure" not in response.headers["set-cookie"].lower()
    access = access_lines(caplog)
    assert access[-1].startswith("198.51.100.7 ")


def test_forwarded_headers_from_trusted_proxy_are_used(
    make_github_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_github_client(trusted_proxies=["10.0.0.0/8"])
    proxy = TestClient(client.app, client=("10.1.2.3", 4000), follow_redirects=False)
    caplog.set_level(logging.INFO, logger="llmcloud.access")
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    response = proxy.get("/auth/github/login", headers=headers)
    location = httpx.URL(response.headers["location"])
    assert location.params["redirect_uri"] == f"{ORIGIN}/auth/github/callback"
    assert "secure" in response.headers["set-cookie"].lower()
    access = access_lines(caplog)
    assert access[-1].startswith("203.0.113.9 ")


def test_forwarded_non_address_logged_quoted(
    make_github_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_github_client(trusted_proxies=["10.0.0.0/8"])
    proxy = TestClient(client.app, client=("10.1.2.3", 4000), follow_redirects=False)
    caplog.set_level(logging.INFO, logger="llmcloud.access")
    forged = 'x "GET /admin" 200 0.1ms y'
    proxy.get("/login", headers={"X-Forwarded-For": forged})
    access = access_lines(caplog)
    assert access[-1].startswith(repr(forged) + ' "GET /login" 200 ')


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "llmcloud.access"]


def pending_logins_of(client: TestClient) -> Any:
    class _Request:
        app = client.app

    return pending_logins(_Request())  # type: ignore[arg-type]


def _password() -> str:
    return PASSWORD


def _csrf(client: TestClient) -> str:
    return csrf_token(client)


def test_deactivated_account_cannot_log_in(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client(auth_new_identity_role="user")
    assert log_in(github, client, "octocat").headers["location"] == "/chats"
    client.post("/logout", data={"csrf_token": _csrf(client)})
    deactivate(database(client), users(client)[-1].id)
    response = log_in(github, client, "octocat")
    assert response.status_code == 403
    assert "deactivated" in response.text
    assert audit_events(client)[-1].reason == "deactivated"
    assert session_count(client) == 1  # only the admin's


def test_unknown_provider_gives_404(make_github_client: Callable[..., TestClient]) -> None:
    client = make_github_client()
    response = client.get("/auth/nosuch/login")
    assert response.status_code == 404
    assert "is not configured; configured: github" in response.text
    assert 'href="/auth/nosuch/login"' not in response.text


def test_callback_without_code_is_rejected(
    make_github_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = make_github_client()
    callback = authorize(github, client, "octocat")
    response = client.get(with_params(callback, code=None))
    assert response.status_code == 400
    assert audit_events(client)[-1].reason == "code_missing"
    assert len(users(client)) == 1
