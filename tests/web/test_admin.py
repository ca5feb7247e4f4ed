"""Admin pages: accounts (approve, role, deactivate, delete), model backends and status."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from llmcloud.auth import api_keys
from llmcloud.auth.accounts import approve, find_account, get_account
from llmcloud.auth.errors import AccountDeactivated
from llmcloud.db import backends as stored_backends
from llmcloud.db import chats
from llmcloud.db.models import Role, User
from llmcloud.web import create_app
from llmcloud.web.deps import WebState
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, csrf_token, log_in, sign_up, web_settings


def state_of(client: TestClient) -> WebState:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    return state


def account(client: TestClient, username: str) -> User:
    user = find_account(state_of(client).db, username)
    assert user is not None
    return user


def text(response: Response) -> str:
    """The page's text with HTML entities decoded, so that quotes in messages compare plainly."""
    return html.unescape(response.text)


def post(client: TestClient, path: str, **fields: str) -> Response:
    return client.post(path, data={**fields, "csrf_token": csrf_token(client)})


@pytest.fixture
def bob(admin: TestClient, make_client: Callable[..., TestClient]) -> TestClient:
    """A second client whose account, bob, signed up and waits for approval."""
    client = make_client()
    assert sign_up(client, "bob").headers["location"] == "/pending"
    return client


def approved(admin: TestClient, bob: TestClient) -> TestClient:
    approve(state_of(admin).db, account(admin, "bob").id)
    assert log_in(bob, "bob").headers["location"] == "/chats"
    return bob


# Accounts


def test_users_page_lists_accounts(admin: TestClient, bob: TestClient) -> None:
    page = admin.get("/admin/users")
    assert page.status_code == 200
    assert "admin (you)" in page.text
    assert "bob" in page.text
    assert "/admin/users/2/approve" in page.text


def test_users_page_filters_by_role(admin: TestClient, bob: TestClient) -> None:
    page = admin.get("/admin/users?role=pending").text
    assert "bob" in page
    assert "admin (you)" not in page


def test_users_page_rejects_unknown_role_filter(admin: TestClient) -> None:
    response = admin.get("/admin/users?role=king")
    assert response.status_code == 422
    assert "'king'" in text(response)


def test_users_page_forbidden_to_user(admin: TestClient, bob: TestClient) -> None:
    response = approved(admin, bob).get("/admin/users")
    assert response.status_code == 403
    assert "admins only" in text(response)


def test_approve_makes_pending_a_user(admin: TestClient, bob: TestClient) -> None:
    response = post(admin, f"/admin/users/{account(admin, 'bob').id}/approve")
    assert response.status_code == 303
    assert account(admin, "bob").role == Role.USER
    assert log_in(bob, "bob").headers["location"] == "/chats"


def test_approve_twice_is_409(admin: TestClient, bob: TestClient) -> None:
    path = f"/admin/users/{account(admin, 'bob').id}/approve"
    post(admin, path)
    response = post(admin, path)
    assert response.status_code == 409
    assert "not pending approval" in text(response)


def test_approve_unknown_account_is_404(admin: TestClient) -> None:
    response = post(admin, "/admin/users/999/approve")
    assert response.status_code == 404
    assert "account 999 not found" in text(response)


def test_action_needs_csrf_token(admin: TestClient, bob: TestClient) -> None:
    response = admin.post(f"/admin/users/{account(admin, 'bob').id}/approve")
    assert response.status_code == 403
    assert account(admin, "bob").role == Role.PENDING


def test_action_from_other_origin_is_rejected(admin: TestClient, bob: TestClient) -> None:
    token = csrf_token(admin)
    response = admin.post(
        f"/admin/users/{account(admin, 'bob').id}/approve",
        data={"csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert account(admin, "bob").role == Role.PENDING


def test_change_role_to_admin(admin: TestClient, bob: TestClient) -> None:
    response = post(admin, f"/admin/users/{account(admin, 'bob').id}/role", role="admin")
    assert response.status_code == 303
    assert account(admin, "bob").role == Role.ADMIN


def test_change_role_rejects_unknown_role(admin: TestClient, bob: TestClient) -> None:
    response = post(admin, f"/admin/users/{account(admin, 'bob').id}/role", role="root")
    assert response.status_code == 422
    assert "role 'root' is unknown" in text(response)
    assert account(admin, "bob").role == Role.PENDING


def test_demoting_last_admin_is_409(admin: TestClient) -> None:
    response = post(admin, f"/admin/users/{account(admin, 'admin').id}/role", role="user")
    assert response.status_code == 409
    assert "only active admin" in text(response)
    assert account(admin, "admin").role == Role.ADMIN


def test_admin_who_steps_down_goes_to_chats(admin: TestClient, bob: TestClient) -> None:
    post(admin, f"/admin/users/{account(admin, 'bob').id}/role", role="admin")
    response = post(admin, f"/admin/users/{account(admin, 'admin').id}/role", role="user")
    assert response.status_code == 303
    assert response.headers["location"] == "/chats"
    assert account(admin, "admin").role == Role.USER


def test_deactivate_logs_out_and_blocks_api_key(admin: TestClient, bob: TestClient) -> None:
    bob = approved(admin, bob)
    bob_id = account(admin, "bob").id
    key = api_keys.create_api_key(state_of(admin).db, bob_id, "script").key
    response = post(admin, f"/admin/users/{bob_id}/deactivate")
    assert response.status_code == 303
    assert not account(admin, "bob").is_active
    assert bob.get("/chats").headers["location"].startswith("/login")
    with pytest.raises(AccountDeactivated):
        api_keys.authenticate_api_key(state_of(admin).db, key)


def test_deactivating_last_admin_is_409(admin: TestClient) -> None:
    response = post(admin, f"/admin/users/{account(admin, 'admin').id}/deactivate")
    assert response.status_code == 409
    assert account(admin, "admin").is_active
    assert admin.get("/admin/users").status_code == 200


def test_reactivate_lets_account_log_in(admin: TestClient, bob: TestClient) -> None:
    bob = approved(admin, bob)
    bob_id = account(admin, "bob").id
    post(admin, f"/admin/users/{bob_id}/deactivate")
    response = post(admin, f"/admin/users/{bob_id}/reactivate")
    assert response.status_code == 303
    assert account(admin, "bob").is_active
    assert log_in(bob, "bob").headers["location"] == "/chats"


def test_delete_page_asks_for_confirmation(admin: TestClient, bob: TestClient) -> None:
    page = admin.get(f"/admin/users/{account(admin, 'bob').id}/delete")
    assert page.status_code == 200
    assert "Type <strong>bob</strong> to confirm" in page.text
    assert find_account(state_of(admin).db, "bob") is not None


def test_delete_with_wrong_confirmation_keeps_account(admin: TestClient, bob: TestClient) -> None:
    bob_id = account(admin, "bob").id
    response = post(admin, f"/admin/users/{bob_id}/delete", confirm_username="bobby")
    assert response.status_code == 422
    assert "'bobby' does not match" in text(response)
    assert get_account(state_of(admin).db, bob_id).username == "bob"


def test_delete_removes_account_and_chats(admin: TestClient, bob: TestClient) -> None:
    bob_id = account(admin, "bob").id
    db = state_of(admin).db
    chats.create_chat(db, bob_id, title="bob's chat")
    response = post(admin, f"/admin/users/{bob_id}/delete", confirm_username="bob")
    assert response.status_code == 303
    assert find_account(db, "bob") is None
    assert chats.list_chats(db, bob_id) == []


def test_deleting_last_admin_is_409(admin: TestClient) -> None:
    admin_id = account(admin, "admin").id
    response = post(admin, f"/admin/users/{admin_id}/delete", confirm_username="admin")
    assert response.status_code == 409
    assert "only active admin" in text(response)
    assert find_account(state_of(admin).db, "admin") is not None


def test_delete_page_of_unknown_account_is_404(admin: TestClient) -> None:
    assert admin.get("/admin/users/999/delete").status_code == 404


def test_user_id_must_be_a_number(admin: TestClient) -> None:
    response = post(admin, "/admin/users/abc/approve")
    assert response.status_code == 422
    assert "user_id" in text(response)


HUGE_ID = "99999999999999999999999"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", f"/admin/users/{HUGE_ID}/approve", f"account {HUGE_ID} not found"),
        ("POST", f"/admin/users/{HUGE_ID}/role", f"account {HUGE_ID} not found"),
        ("POST", f"/admin/users/{HUGE_ID}/deactivate", f"account {HUGE_ID} not found"),
        ("POST", f"/admin/users/{HUGE_ID}/reactivate", f"account {HUGE_ID} not found"),
        ("GET", f"/admin/users/{HUGE_ID}/delete", f"account {HUGE_ID} not found"),
        ("POST", f"/admin/users/{HUGE_ID}/delete", f"account {HUGE_ID} not found"),
        ("GET", f"/admin/users/{HUGE_ID}/identities", f"account {HUGE_ID} not found"),
        ("POST", f"/admin/users/1/identities/{HUGE_ID}/unlink", f"identity {HUGE_ID} not found"),
        ("POST", "/admin/users/2147483648/approve", "account 2147483648 not found"),
        ("POST", "/admin/users/-2147483649/approve", "account -2147483649 not found"),
        ("POST", f"/admin/backends/{HUGE_ID}/remove", f"backend {HUGE_ID} not found"),
        ("GET", "/admin/users/" + "9" * 5000 + "/delete", "account " + "9" * 30 + "... not found"),
    ],
)
def test_id_out_of_range_is_404(admin: TestClient, method: str, path: str, expected: str) -> None:
    if method == "GET":
        response = admin.get(path)
    else:
        response = post(admin, path, role="user", confirm_username="admin")
    assert response.status_code == 404
    assert expected in text(response)


def test_largest_id_is_plain_404(admin: TestClient) -> None:
    response = post(admin, "/admin/users/2147483647/approve")
    assert response.status_code == 404
    assert "account 2147483647 not found" in text(response)


# Status


def test_admin_redirects_to_status(admin: TestClient) -> None:
    response = admin.get("/admin")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/status"


def test_status_page_shows_version_backends_models(admin: TestClient, bob: TestClient) -> None:
    page = admin.get("/admin/status").text
    assert "llmcloud 0." in page
    assert "Uptime" in page
    assert "fake" in page
    assert "fake-model" in page
    assert "1 waiting for approval" in page


def test_status_page_says_whose_queue_it_counts(admin: TestClient) -> None:
    page = admin.get("/admin/status").text
    assert "requests on this instance only" in page


def test_nav_shows_admin_link_only_to_admins(admin: TestClient, bob: TestClient) -> None:
    assert 'href="/admin"' in admin.get("/chats").text
    assert 'href="/admin"' not in approved(admin, bob).get("/chats").text


# Backends


@pytest.fixture
def second_backend() -> Iterator[FakeBackend]:
    backend = FakeBackend(("second-model",)).start()
    yield backend
    backend.stop()


def wait_for_model(state: WebState, model: str, seconds: float = 5.0) -> bool:
    """Wait until the gateway lists `model`; the test client runs the app in another thread."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(model in backend.models for backend in state.models.status().backends):
            return True
        time.sleep(0.05)
    return False


def add_backend(client: TestClient, **fields: str) -> Response:
    values = {"name": "second", "kind": "openai", "base_url": "", "weight": "1"}
    return post(client, "/admin/backends", **{**values, **fields})


def test_backends_page_shows_configured_backend(admin: TestClient) -> None:
    page = admin.get("/admin/backends").text
    assert "fake" in page
    assert "healthy" in page
    assert "change it in the settings" in page


def test_add_backend_joins_gateway(admin: TestClient, second_backend: FakeBackend) -> None:
    response = add_backend(admin, base_url=second_backend.url)
    assert response.status_code == 303
    state = state_of(admin)
    assert [row.name for row in stored_backends.list_backends(state.db)] == ["second"]
    assert wait_for_model(state, "second-model")
    assert "second-model" in admin.get("/admin/backends").text


def test_add_backend_stores_api_key(admin: TestClient, second_backend: FakeBackend) -> None:
    add_backend(admin, base_url=second_backend.url, api_key="sk-secret")
    assert stored_backends.list_backends(state_of(admin).db)[0].api_key == "sk-secret"
    assert "sk-secret" not in admin.get("/admin/backends").text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"base_url": "ftp://host"}, "base_url"),
        ({"base_url": ""}, "base_url"),
        ({"base_url": "http://127.0.0.1:1", "name": "bad name!"}, "invalid backend name"),
        ({"base_url": "http://127.0.0.1:1", "kind": "grpc"}, "kind"),
        ({"base_url": "http://127.0.0.1:1", "weight": "heavy"}, "'heavy' is not a whole number"),
        ({"base_url": "http://127.0.0.1:1", "weight": "5000"}, "weight"),
        ({"base_url": "http://127.0.0.1:1", "weight": "9" * 5000}, "is not a whole number from 1"),
        ({"base_url": "http://127.0.0.1:1", "weight": "0"}, "'0' is not a whole number from 1"),
        ({"base_url": "http://127.0.0.1:1", "weight": "-1"}, "'-1' is not a whole number"),
        ({"base_url": "http://127.0.0.1:1", "weight": "1e3"}, "'1e3' is not a whole number"),
        ({"base_url": "http://127.0.0.1:1", "weight": "\u00b2"}, "is not a whole number"),
        ({"base_url": "http://127.0.0.1:99999"}, "port 99999 is out of range, expected 1 to"),
        ({"base_url": "http://127.0.0.1:0"}, "port 0 is out of range"),
        ({"base_url": "http://user:s3cretpw@127.0.0.1:1"}, "remove the user name and password"),
        ({"base_url": "http://user:s3cretpw@127.0.0.1:1"}, "put the key in api_key"),
        ({"base_url": "http://token@127.0.0.1:1"}, "remove the user name and password"),
    ],
)
def test_add_backend_rejects_bad_input(
    admin: TestClient, fields: dict[str, str], expected: str
) -> None:
    response = add_backend(admin, **fields)
    assert response.status_code == 422
    assert expected in text(response)
    assert stored_backends.list_backends(state_of(admin).db) == []


def test_add_backend_keeps_form_values_after_error(admin: TestClient) -> None:
    page = add_backend(admin, base_url="ftp://host", name="kept-name").text
    assert 'value="kept-name"' in page


def test_add_backend_hides_password_in_url(admin: TestClient) -> None:
    response = add_backend(admin, base_url="http://user:s3cretpw@127.0.0.1:18998")
    assert response.status_code == 422
    assert "s3cretpw" not in response.text
    assert 'value="http://***@127.0.0.1:18998"' in response.text


def test_add_backend_rejects_configured_name(admin: TestClient) -> None:
    response = add_backend(admin, name="fake", base_url="http://127.0.0.1:1")
    assert response.status_code == 409
    assert "already used in the settings" in text(response)


def test_add_backend_rejects_taken_name(admin: TestClient, second_backend: FakeBackend) -> None:
    add_backend(admin, base_url=second_backend.url)
    response = add_backend(admin, base_url="http://127.0.0.1:1")
    assert response.status_code == 409
    assert "already taken" in text(response)
    assert stored_backends.list_backends(state_of(admin).db)[0].base_url == second_backend.url


def test_remove_backend_leaves_gateway(admin: TestClient, second_backend: FakeBackend) -> None:
    add_backend(admin, base_url=second_backend.url)
    state = state_of(admin)
    row = stored_backends.list_backends(state.db)[0]
    response = post(admin, f"/admin/backends/{row.id}/remove")
    assert response.status_code == 303
    assert stored_backends.list_backends(state.db) == []
    assert [backend.name for backend in state.models.status().backends] == ["fake"]


def test_remove_unknown_backend_is_404(admin: TestClient) -> None:
    response = post(admin, "/admin/backends/999/remove")
    assert response.status_code == 404
    assert "backend 999 not found" in text(response)


def test_stored_backends_join_gateway_at_start(
    tmp_path: Path, fake_backend: FakeBackend, second_backend: FakeBackend
) -> None:
    settings = web_settings(tmp_path / "data", fake_backend.url)
    with TestClient(create_app(settings, hasher=CHEAP_HASHER)) as first:
        db = state_of(first).db
        stored_backends.add_backend(db, name="second", kind="openai", base_url=second_backend.url)
    with TestClient(create_app(settings, hasher=CHEAP_HASHER)) as restarted:
        names = [backend.name for backend in state_of(restarted).models.status().backends]
    assert names == ["fake", "second"]


def test_invalid_stored_backend_is_skipped(
    make_client: Callable[..., TestClient], tmp_path: Path, fake_backend: FakeBackend
) -> None:
    first = make_client()
    db = state_of(first).db
    stored_backends.add_backend(db, name="fake", kind="openai", base_url="http://127.0.0.1:1")
    stored_backends.add_backend(db, name="broken", kind="ollama", base_url="not a url")
    admin = make_client()
    assert sign_up(admin, "admin").status_code == 303
    names = [backend.name for backend in state_of(admin).models.status().backends]
    assert names == ["fake"]
    page = text(admin.get("/admin/backends"))
    assert "the settings already define a backend named 'fake'" in page
    assert "invalid stored values: base_url" in page


def test_stored_backend_with_password_is_skipped_unshown(
    make_client: Callable[..., TestClient],
) -> None:
    first = make_client()
    url = "http://user:s3cretpw@127.0.0.1:1"
    stored_backends.add_backend(state_of(first).db, name="creds", kind="ollama", base_url=url)
    admin = make_client()
    assert sign_up(admin, "admin").status_code == 303
    page = text(admin.get("/admin/backends"))
    assert "remove the user name and password" in page
    assert "s3cretpw" not in page


@pytest.mark.parametrize(
    ("action", "fields"),
    [
        ("approve", {}),
        ("role", {"role": "admin"}),
        ("deactivate", {}),
        ("reactivate", {}),
    ],
)
def test_form_naming_other_account_rejected(
    admin: TestClient, make_client: Callable[..., TestClient], action: str, fields: dict[str, str]
) -> None:
    # Ids are not reused, but a form is still checked against the account it names.
    mallory = make_client()
    sign_up(mallory, "mallory")
    mallory_id = account(admin, "mallory").id
    response = post(admin, f"/admin/users/{mallory_id}/{action}", username="zed", **fields)
    assert response.status_code == 404
    assert "is no longer 'zed'" in text(response)
    assert account(admin, "mallory").role == Role.PENDING
    assert account(admin, "mallory").is_active
