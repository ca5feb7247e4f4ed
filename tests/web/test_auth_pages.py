"""Sign-up, log-in, log-out, the waiting page and the session cookie."""

from __future__ import annotations

import html
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.testclient import TestClient

from llmcloud.auth.accounts import approve, deactivate, delete_account, find_account, set_role
from llmcloud.db.models import UserSession, utcnow
from llmcloud.web import create_app
from llmcloud.web.deps import AdminUser, WebState
from tests.web.conftest import CHEAP_HASHER, ORIGIN, PASSWORD, csrf_token, log_in, sign_up


def state_of(client: TestClient) -> WebState:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    return state


def test_home_redirects_to_signup_without_accounts(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 303
    assert response.headers["location"] == "/signup"


def test_first_signup_becomes_admin_and_logs_in(client: TestClient) -> None:
    response = sign_up(client, "alice")
    assert response.status_code == 303
    assert response.headers["location"] == "/chats"
    assert find_account(state_of(client).db, "alice").role == "admin"  # type: ignore[union-attr]
    assert client.get("/chats").status_code == 200


def test_session_cookie_flags(client: TestClient) -> None:
    cookie = sign_up(client, "alice").headers["set-cookie"]
    assert "llmcloud_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_secure_under_https_public_url(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(public_url="https://chat.example.org")
    client.headers["Origin"] = "https://chat.example.org"
    cookie = sign_up(client, "alice").headers["set-cookie"]
    assert "Secure" in cookie


def test_second_signup_waits_for_approval(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    second = make_client()
    response = sign_up(second, "bob")
    assert response.headers["location"] == "/pending"
    page = second.get("/pending")
    assert "is waiting for an admin" in page.text
    assert second.get("/chats").headers["location"].startswith("/login")


def test_pending_page_shows_approval(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    second = make_client()
    sign_up(second, "bob")
    db = state_of(admin).db
    approve(db, find_account(db, "bob").id)  # type: ignore[union-attr]
    assert "is approved" in second.get("/pending/status").text
    assert log_in(second, "bob").headers["location"] == "/chats"


def test_pending_page_ignores_reused_id(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    first = make_client()
    sign_up(first, "firstn")
    db = state_of(admin).db
    delete_account(db, find_account(db, "firstn").id)  # type: ignore[union-attr]
    sign_up(make_client(), "secondn")
    approve(db, find_account(db, "secondn").id)  # type: ignore[union-attr]
    status = first.get("/pending/status").text
    assert "secondn" not in status
    assert "Your account is waiting" in status


def test_pending_page_says_when_deactivated(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    second = make_client()
    sign_up(second, "bob")
    db = state_of(admin).db
    deactivate(db, find_account(db, "bob").id)  # type: ignore[union-attr]
    status = second.get("/pending/status").text
    assert "is deactivated" in status
    assert "waiting" not in status


def test_login_of_pending_account_shows_waiting_page(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    sign_up(make_client(), "bob")
    third = make_client()
    response = log_in(third, "bob")
    assert response.headers["location"] == "/pending"
    assert "bob" in third.get("/pending").text


def test_login_rejects_wrong_password(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    other = make_client()
    response = log_in(other, "admin", "wrong password")
    assert response.status_code == 401
    assert "invalid username or password" in response.text


def test_signup_rejects_bad_username(client: TestClient) -> None:
    response = sign_up(client, "a b")
    assert response.status_code == 422
    assert "contains" in response.text


def test_signup_rejects_different_passwords(client: TestClient) -> None:
    data = {"username": "alice", "password": PASSWORD, "password_confirm": PASSWORD + "x"}
    response = client.post("/signup", data=data)
    assert response.status_code == 422
    assert "passwords differ" in response.text


def test_signup_rejects_taken_username(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    response = sign_up(make_client(), "ADMIN")
    assert response.status_code == 409


def test_signup_closed_rejects_second_account(make_client: Callable[..., TestClient]) -> None:
    first = make_client(signup_mode="closed")
    sign_up(first, "alice")
    response = sign_up(make_client(), "bob")
    assert response.status_code == 403
    assert "sign-up is closed" in response.text


def test_signup_open_makes_users(make_client: Callable[..., TestClient]) -> None:
    first = make_client(signup_mode="open")
    sign_up(first, "alice")
    second = make_client()
    assert sign_up(second, "bob").headers["location"] == "/chats"


def test_logout_deletes_session(admin: TestClient) -> None:
    cookie = admin.cookies.get("llmcloud_session")
    response = admin.post("/logout", data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 303
    admin.cookies.clear()
    admin.cookies.set("llmcloud_session", cookie or "")
    assert admin.get("/chats").headers["location"].startswith("/login")


def test_logout_rejects_missing_csrf_token(admin: TestClient) -> None:
    response = admin.post("/logout", data={})
    assert response.status_code == 403
    assert admin.get("/chats").status_code == 200


def test_post_from_other_origin_rejected(admin: TestClient) -> None:
    token = csrf_token(admin)
    response = admin.post(
        "/logout", data={"csrf_token": token}, headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert "evil.example" in response.text


def test_forged_cookie_is_not_a_session(admin: TestClient) -> None:
    cookie = admin.cookies.get("llmcloud_session") or ""
    token = cookie.rsplit(".", 1)[0]
    admin.cookies.clear()
    admin.cookies.set("llmcloud_session", token + ".forged")
    assert admin.get("/chats").status_code == 303


def test_restart_keeps_session(admin: TestClient) -> None:
    settings = state_of(admin).settings
    restarted = create_app(settings, hasher=CHEAP_HASHER)
    with TestClient(restarted, headers={"Origin": ORIGIN}, follow_redirects=False) as again:
        again.cookies.update(admin.cookies)
        assert again.get("/chats").status_code == 200


def test_login_next_rejects_other_site(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    other = make_client()
    data = {"username": "admin", "password": PASSWORD, "next": "//evil.example/x"}
    assert other.post("/login", data=data).headers["location"] == "/chats"


def test_expired_session_redirects_to_login(admin: TestClient) -> None:
    with state_of(admin).db.transaction() as session:
        session.execute(sa.update(UserSession).values(expires_at=utcnow()))
    response = admin.get("/chats")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/chats"


def test_htmx_request_without_session_gets_401(client: TestClient) -> None:
    response = client.get("/chats", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.text == "session expired or logged out; log in again"


def test_json_request_without_session_gets_401(client: TestClient) -> None:
    response = client.get("/chats", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json() == {"error": "session expired or logged out; log in again"}


def test_deactivated_account_logged_out_and_rejected(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    db = state_of(admin).db
    second = make_client()
    sign_up(second, "bob")
    bob = find_account(db, "bob")
    assert bob is not None
    set_role(db, bob.id, "user")
    log_in(second, "bob")
    assert second.get("/chats").status_code == 200
    deactivate(db, bob.id)
    assert second.get("/chats").headers["location"] == "/login?next=/chats"
    response = log_in(second, "bob")
    assert response.status_code == 403
    assert "deactivated" in response.text


def test_admin_page_dependency_rejects_users(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    router = APIRouter()

    @router.get("/admin-probe")
    def probe(active: AdminUser) -> dict[str, str]:
        return {"user": active.user.username}

    admin.app.include_router(router)  # type: ignore[attr-defined]
    state_of(admin).settings = state_of(admin).settings.model_copy(update={"signup_mode": "open"})
    user = make_client()
    sign_up(user, "bob")
    assert admin.get("/admin-probe").json() == {"user": "admin"}
    assert user.get("/admin-probe").status_code == 403


@pytest.mark.parametrize("path", ["/login", "/signup"])
def test_json_body_rejected_as_not_form(client: TestClient, path: str) -> None:
    sign_up(client, "admin")
    client.cookies.clear()

    response = client.post(path, json={"username": "admin", "password": PASSWORD})
    text = html.unescape(response.text)

    assert response.status_code == 415
    assert "unsupported content type 'application/json'" in text
    assert "application/x-www-form-urlencoded or multipart/form-data" in text
    assert "invalid username or password" not in text


def test_json_body_error_is_json_for_api_clients(client: TestClient) -> None:
    response = client.post(
        "/login",
        json={"username": "admin", "password": PASSWORD},
        headers={"Accept": "application/json"},
    )

    assert response.status_code == 415
    assert response.json()["error"].startswith("unsupported content type 'application/json'")


def test_multipart_login_accepted(client: TestClient) -> None:
    sign_up(client, "admin")
    client.cookies.clear()

    response = client.post(
        "/login", data={"username": "admin", "password": PASSWORD}, files={"unused": b""}
    )

    assert response.status_code == 303


def test_login_attempts_past_the_limit_get_429(make_client: Callable[..., TestClient]) -> None:
    admin = make_client(web_login_rate_limit=3)
    sign_up(admin, "admin")
    visitor = make_client()
    for _ in range(3):
        assert log_in(visitor, "admin", "wrong password").status_code == 401
    blocked = log_in(visitor, "admin")
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert "too many log-in attempts" in html.unescape(blocked.text)
    assert "setting web_login_rate_limit" in blocked.text
    # The limit is per account name, so another account's log-in goes on.
    assert log_in(visitor, "someone-else").status_code == 401


def test_login_ends_the_session_it_replaces(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    old_cookie = admin.cookies.get("llmcloud_session")
    assert old_cookie is not None
    assert log_in(admin, "admin").status_code == 303
    assert admin.cookies.get("llmcloud_session") != old_cookie
    stale = make_client()
    stale.cookies.set("llmcloud_session", old_cookie)
    assert stale.get("/chats").headers["location"].startswith("/login")
