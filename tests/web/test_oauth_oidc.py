"""OpenID Connect log-in against a real provider: the npm package oidc-provider on loopback.

The provider's own login form is filled in over HTTP, as a browser would.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmcloud.auth.accounts import create_account, set_role
from llmcloud.db.models import Outcome, Role
from tests.oidc.server import OidcProviderProcess, free_port
from tests.web.conftest import ORIGIN, csrf_token, sign_up
from tests.web.oauth_helpers import (
    audit_events,
    callback_params,
    database,
    follow_provider,
    identities,
    session_count,
    start,
    users,
    with_params,
)

PROVIDER = "testidp"
CLIENT_ID = "llmcloud-test"
CLIENT_SECRET = "oidc-test-secret"
ACCOUNTS = {
    "alice": {
        "password": "alice-pass",
        "claims": {
            "email": "alice@example.org",
            "email_verified": True,
            "preferred_username": "alice",
            "groups": ["llmcloud-users"],
        },
    },
    "boss": {
        "password": "boss-pass",
        "claims": {"email": "boss@example.org", "email_verified": True, "groups": ["admins"]},
    },
    "carol": {
        "password": "carol-pass",
        "claims": {"email": "Carol@Example.ORG", "email_verified": True},
    },
    "mallory": {
        "password": "mallory-pass",
        "claims": {"email": "Admin@Example.org", "email_verified": False},
    },
}


def client_registration() -> dict[str, Any]:
    """The registration of llmcloud at the test provider."""
    return {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{ORIGIN}/auth/{PROVIDER}/callback"],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }


OTHER_CLIENT_ID = "another-app"


def other_client_registration() -> dict[str, Any]:
    """Another application registered at the same provider."""
    return {
        "client_id": OTHER_CLIENT_ID,
        "client_secret": "another-app-secret",
        "redirect_uris": ["http://127.0.0.1:9/callback"],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }


def credentials(login: str) -> dict[str, str]:
    return {"login": login, "password": ACCOUNTS[login]["password"]}


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProviderProcess]:
    process = OidcProviderProcess(
        tmp_path_factory.mktemp("oidc"), [client_registration()], ACCOUNTS
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def userinfo_provider(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OidcProviderProcess]:
    """A provider that keeps email and groups out of the ID token, in its userinfo response."""
    process = OidcProviderProcess(
        tmp_path_factory.mktemp("oidc-userinfo"),
        [client_registration()],
        ACCOUNTS,
        claims_in_userinfo_only=True,
    ).start()
    yield process
    process.stop()


@pytest.fixture
def start_provider(tmp_path: Path) -> Iterator[Callable[..., OidcProviderProcess]]:
    """A factory of providers of one test, with the fault options of tests/oidc/provider.mjs."""
    started: list[OidcProviderProcess] = []

    def start(**faults: Any) -> OidcProviderProcess:
        config_dir = tmp_path / f"oidc-{len(started)}"
        config_dir.mkdir()
        clients = [client_registration(), other_client_registration()]
        process = OidcProviderProcess(config_dir, clients, ACCOUNTS, faults=faults)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


def provider_settings(issuer: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": PROVIDER,
        "display_name": "Test IdP",
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "email", "profile", "groups"],
        "admin_groups": ["admins"],
        "user_groups": ["llmcloud-users"],
        **changes,
    }


@pytest.fixture
def make_oidc_client(
    make_client: Callable[..., TestClient], oidc_provider: OidcProviderProcess
) -> Callable[..., TestClient]:
    """A factory of clients of one app with the provider configured; an admin exists."""

    def make(provider: dict[str, Any] | None = None, **overrides: Any) -> TestClient:
        settings = {
            "public_url": ORIGIN,
            "auth_oidc_providers": [provider or provider_settings(oidc_provider.issuer)],
            "auth_provider_timeout": 10.0,
            **overrides,
        }
        admin = make_client(**settings)
        assert sign_up(admin, "admin").status_code == 303
        return make_client()

    return make


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    """The provider's side of one browser: its cookies at the provider."""
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


def authorize(client: TestClient, browser: httpx.Client, login: str) -> str:
    return follow_provider(start(client, PROVIDER), browser, credentials(login))


def log_in(client: TestClient, browser: httpx.Client, login: str) -> httpx.Response:
    return client.get(authorize(client, browser, login))


def test_oidc_login_through_provider_form(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    response = log_in(client, browser, "alice")
    assert response.status_code == 303
    assert response.headers["location"] == "/chats"
    assert client.get("/chats").status_code == 200
    identity = identities(client)[0]
    assert (identity.provider, identity.subject) == (PROVIDER, "alice")
    assert identity.email_verified is True
    assert users(client)[-1].role == Role.USER


def test_oidc_claims_from_userinfo(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    userinfo_provider: OidcProviderProcess,
) -> None:
    client = make_oidc_client(provider_settings(userinfo_provider.issuer))
    assert log_in(client, browser, "alice").headers["location"] == "/chats"
    identity = identities(client)[0]
    assert identity.email == "alice@example.org"
    assert identity.email_verified is True
    assert users(client)[-1].role == Role.USER


def test_oidc_authorization_request_has_pkce_and_nonce(
    make_oidc_client: Callable[..., TestClient],
) -> None:
    client = make_oidc_client()
    params = httpx.URL(start(client, PROVIDER)).params
    assert params["code_challenge_method"] == "S256"
    assert params["nonce"]
    assert params["state"]
    assert params["redirect_uri"] == f"{ORIGIN}/auth/{PROVIDER}/callback"


def test_oidc_admin_group_gives_admin_role(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    assert users(client)[-1].role == Role.ADMIN


def test_oidc_new_identity_without_groups_is_pending(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    assert log_in(client, browser, "carol").headers["location"] == "/pending"
    assert users(client)[-1].role == Role.PENDING
    assert session_count(client) == 1  # only the admin's


def test_oidc_links_verified_mixed_case_email(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    oidc_provider: OidcProviderProcess,
) -> None:
    # Without user_groups, carol's lack of groups leaves the linked account a user.
    client = make_oidc_client(provider_settings(oidc_provider.issuer, user_groups=[]))
    existing = create_account(database(client), "carol", None, email="carol@example.org")
    assert log_in(client, browser, "carol").headers["location"] == "/chats"
    assert identities(client)[0].user_id == existing.id
    assert len(users(client)) == 2


def test_oidc_unverified_email_never_links(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    admin_id = users(client)[0].id
    with database(client).transaction() as session:
        from llmcloud.db.models import User

        stored = session.get(User, admin_id)
        assert stored is not None
        stored.email = "admin@example.org"
    response = log_in(client, browser, "mallory")
    assert response.headers["location"] == "/pending"
    assert identities(client)[0].user_id != admin_id
    assert users(client)[-1].email is None


def test_oidc_used_code_is_rejected(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    first = authorize(client, browser, "alice")
    assert client.get(first).status_code == 303
    client.post("/logout", data={"csrf_token": csrf_token(client)})
    second = authorize(client, browser, "alice")
    response = client.get(with_params(second, code=callback_params(first)["code"]))
    assert response.status_code == 400
    assert audit_events(client)[-1].reason == "code_rejected"
    assert session_count(client) == 1  # only the admin's


def test_provider_requires_pkce_verifier(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    oidc_provider: OidcProviderProcess,
) -> None:
    client = make_oidc_client()
    code = callback_params(authorize(client, browser, "alice"))["code"]
    response = httpx.post(
        f"{oidc_provider.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": f"{ORIGIN}/auth/{PROVIDER}/callback",
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_oidc_provider_error_parameter(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    callback = authorize(client, browser, "alice")
    response = client.get(with_params(callback, code=None, error="login_required"))
    assert response.status_code == 401
    assert f'href="/auth/{PROVIDER}/login"' in response.text
    assert audit_events(client)[-1].reason == "provider_error"
    assert len(users(client)) == 1


def test_oidc_provider_down_gives_502(make_oidc_client: Callable[..., TestClient]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    client = make_oidc_client(provider_settings(closed))
    response = client.get(f"/auth/{PROVIDER}/login")
    assert response.status_code == 502
    assert audit_events(client)[-1].reason == "provider_unreachable"


def test_oidc_provider_timeout_gives_502(make_oidc_client: Callable[..., TestClient]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = make_oidc_client(provider_settings(issuer), auth_provider_timeout=0.3)
        response = client.get(f"/auth/{PROVIDER}/login")
    assert response.status_code == 502
    assert audit_events(client)[-1].reason == "provider_timeout"


def test_oidc_discovered_issuer_must_match(
    make_oidc_client: Callable[..., TestClient], oidc_provider: OidcProviderProcess
) -> None:
    issuer = oidc_provider.issuer.replace("127.0.0.1", "localhost")
    client = make_oidc_client(provider_settings(issuer))
    response = client.get(f"/auth/{PROVIDER}/login")
    assert response.status_code == 502
    assert audit_events(client)[-1].reason == "discovery_issuer_mismatch"


def test_oidc_logout_and_login_again(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    assert log_in(client, browser, "alice").headers["location"] == "/chats"
    assert client.post("/logout", data={"csrf_token": csrf_token(client)}).status_code == 303
    assert log_in(client, browser, "alice").headers["location"] == "/chats"
    assert client.get("/chats").status_code == 200
    assert len(identities(client)) == 1


def test_oidc_login_logs_no_code_or_secret(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_oidc_client()
    caplog.set_level(logging.DEBUG)
    authorization = start(client, PROVIDER)
    callback = follow_provider(authorization, browser, credentials("alice"))
    assert client.get(callback).status_code == 303
    secrets = [
        CLIENT_SECRET,
        callback_params(callback)["code"],
        callback_params(callback)["state"],
        httpx.URL(authorization).params["nonce"],
    ]
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith("llmcloud")]
    assert any(line.startswith("login success provider=testidp") for line in server_lines)
    for secret in secrets:
        assert not [line for line in server_lines if secret in line]


def assert_login_rejected(
    client: TestClient, response: httpx.Response, status: int, reason: str
) -> None:
    """Check the error page, that nothing was created, and the audit event of a failed log-in."""
    assert response.status_code == status
    assert f"<code>{reason}</code>" in response.text
    assert f'href="/auth/{PROVIDER}/login"' in response.text
    assert len(users(client)) == 1  # only the admin
    assert list(identities(client)) == []
    assert session_count(client) == 1  # only the admin's
    event = audit_events(client)[-1]
    assert event.action == "login"
    assert event.outcome == Outcome.FAILURE
    assert event.provider == PROVIDER
    assert event.reason == reason


def test_oidc_id_token_for_another_client_is_rejected(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    provider = start_provider(idTokenAudienceClient=OTHER_CLIENT_ID)
    client = make_oidc_client(provider_settings(provider.issuer))
    response = log_in(client, browser, "alice")
    assert_login_rejected(client, response, 401, "id_token_wrong_audience")


def test_oidc_id_token_from_another_issuer_is_rejected(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    # Configured with the full discovery URL, llmcloud takes the issuer that the document names,
    # which here differs from the `iss` that the provider puts into its ID tokens.
    provider = start_provider(discoveryIssuer="/tenant-a/v2.0")
    discovery_url = f"{provider.issuer}/.well-known/openid-configuration"
    client = make_oidc_client(provider_settings(discovery_url))
    response = log_in(client, browser, "alice")
    assert_login_rejected(client, response, 401, "id_token_wrong_issuer")


def test_oidc_expired_id_token_is_rejected(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    # The provider's clock runs 10 minutes behind, so its 60-second ID tokens arrive expired by
    # far more than the accepted clock difference of LEEWAY_SECONDS.
    provider = start_provider(clockOffsetSeconds=-600, idTokenTtlSeconds=60)
    client = make_oidc_client(provider_settings(provider.issuer))
    response = log_in(client, browser, "alice")
    assert_login_rejected(client, response, 401, "id_token_expired")


def test_oidc_small_clock_difference_is_accepted(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    # 30 seconds behind with a 10-second TTL: expired 20 seconds ago, within LEEWAY_SECONDS.
    provider = start_provider(clockOffsetSeconds=-30, idTokenTtlSeconds=10)
    client = make_oidc_client(provider_settings(provider.issuer))
    assert log_in(client, browser, "alice").headers["location"] == "/chats"


def test_oidc_id_token_bad_signature_is_rejected(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    provider = start_provider(jwksWithoutSigningKey=True)
    client = make_oidc_client(provider_settings(provider.issuer))
    response = log_in(client, browser, "alice")
    assert_login_rejected(client, response, 401, "id_token_bad_signature")


def test_oidc_token_response_without_id_token(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    provider = start_provider(withoutIdToken=True)
    client = make_oidc_client(provider_settings(provider.issuer))
    response = log_in(client, browser, "alice")
    assert_login_rejected(client, response, 502, "id_token_missing")


def test_oidc_userinfo_of_another_subject_is_rejected(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    # Email and groups come only from userinfo here, which describes someone else.
    provider = start_provider(claimsInUserinfoOnly=True, userinfoSubject="boss")
    client = make_oidc_client(provider_settings(provider.issuer))
    response = log_in(client, browser, "alice")
    assert_login_rejected(client, response, 401, "userinfo_subject_mismatch")


def test_oidc_wrong_nonce_is_rejected(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    # The browser swaps the nonce of the authorization request, so the provider signs another one.
    client = make_oidc_client()
    authorization = httpx.URL(start(client, PROVIDER))
    changed = authorization.copy_set_param("nonce", "a-nonce-of-the-attacker")
    response = client.get(follow_provider(str(changed), browser, credentials("alice")))
    assert_login_rejected(client, response, 401, "id_token_wrong_nonce")


def test_oidc_missing_nonce_is_rejected(
    make_oidc_client: Callable[..., TestClient], browser: httpx.Client
) -> None:
    client = make_oidc_client()
    authorization = httpx.URL(start(client, PROVIDER))
    changed = authorization.copy_remove_param("nonce")
    response = client.get(follow_provider(str(changed), browser, credentials("alice")))
    assert_login_rejected(client, response, 401, "id_token_wrong_nonce")


def log_out(client: TestClient) -> None:
    assert client.post("/logout", data={"csrf_token": csrf_token(client)}).status_code == 303


def role_changes(client: TestClient) -> list[tuple[Outcome, str | None]]:
    return [(e.outcome, e.reason) for e in audit_events(client) if e.action == "role_change"]


def test_oidc_admin_leaving_admin_group_becomes_user(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    provider = start_provider()
    client = make_oidc_client(provider_settings(provider.issuer))
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    assert users(client)[-1].role == Role.ADMIN
    log_out(client)

    provider.set_claims("boss", groups=["llmcloud-users"])
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    assert users(client)[-1].role == Role.USER
    assert role_changes(client) == [
        (Outcome.SUCCESS, "pending_to_admin"),
        (Outcome.SUCCESS, "admin_to_user"),
    ]


def test_oidc_account_leaving_all_groups_becomes_pending(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    provider = start_provider()
    client = make_oidc_client(provider_settings(provider.issuer))
    assert log_in(client, browser, "alice").headers["location"] == "/chats"

    provider.set_claims("alice", groups=[])
    assert log_in(client, browser, "alice").headers["location"] == "/pending"
    assert users(client)[-1].role == Role.PENDING
    assert session_count(client) == 1  # only the admin's: alice's sessions ended
    assert client.get("/chats").status_code == 303
    assert role_changes(client)[-1] == (Outcome.SUCCESS, "user_to_pending")
    assert audit_events(client)[-1].reason == "pending"


def test_oidc_last_admin_keeps_role(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = start_provider()
    client = make_oidc_client(provider_settings(provider.issuer))
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    set_role(database(client), users(client)[0].id, Role.USER)  # boss is now the only admin
    log_out(client)

    provider.set_claims("boss", groups=[])
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    assert users(client)[-1].role == Role.ADMIN
    assert role_changes(client)[-1] == (Outcome.FAILURE, "last_active_admin")
    warnings = [r for r in caplog.records if r.name == "llmcloud.auth" and r.levelname == "WARNING"]
    assert any("last active admin" in r.getMessage() for r in warnings)


def test_oidc_distributed_groups_claim_keeps_role(
    make_oidc_client: Callable[..., TestClient],
    browser: httpx.Client,
    start_provider: Callable[..., OidcProviderProcess],
) -> None:
    provider = start_provider()
    client = make_oidc_client(provider_settings(provider.issuer))
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    log_out(client)

    # The groups now come from another source, as for users in too many groups to fit a token.
    provider.set_claims(
        "boss",
        groups=None,
        _claim_names={"groups": "directory"},
        _claim_sources={"directory": {"endpoint": "http://127.0.0.1:9/groups"}},
    )
    assert log_in(client, browser, "boss").headers["location"] == "/chats"
    assert users(client)[-1].role == Role.ADMIN
    assert role_changes(client) == [(Outcome.SUCCESS, "pending_to_admin")]
