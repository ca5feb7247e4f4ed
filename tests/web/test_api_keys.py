"""The API keys page: create a key (shown once), list keys, revoke one."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient
from httpx import Response

from llmcloud.auth import api_keys
from llmcloud.auth.accounts import approve, find_account
from llmcloud.db.models import User
from llmcloud.web.deps import WebState
from tests.web.conftest import csrf_token, log_in, sign_up

_NEW_KEY = re.compile(r'id="new-key" value="(llmc_[A-Za-z0-9_-]+)"')


def state_of(client: TestClient) -> WebState:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    return state


def account(client: TestClient, username: str) -> User:
    user = find_account(state_of(client).db, username)
    assert user is not None
    return user


def create_key(client: TestClient, name: str) -> Response:
    return client.post("/api-keys", data={"name": name, "csrf_token": csrf_token(client)})


def test_page_lists_no_keys(admin: TestClient) -> None:
    page = admin.get("/api-keys")
    assert page.status_code == 200
    assert "No keys yet" in page.text
    assert "http://testserver/v1" in page.text


def test_create_shows_key_once(admin: TestClient) -> None:
    response = create_key(admin, "laptop")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    match = _NEW_KEY.search(response.text)
    assert match is not None
    key = match.group(1)
    assert key not in admin.get("/api-keys").text
    assert api_keys.authenticate_api_key(state_of(admin).db, key).username == "admin"


def test_key_is_stored_hashed(admin: TestClient) -> None:
    key = _NEW_KEY.search(create_key(admin, "laptop").text).group(1)  # type: ignore[union-attr]
    record = api_keys.list_api_keys(state_of(admin).db, account(admin, "admin").id)[0]
    assert record.key_hash == api_keys.hash_key(key)
    assert record.key_hash != key
    assert key.startswith(record.prefix)


def test_list_shows_name_and_prefix(admin: TestClient) -> None:
    create_key(admin, "laptop scripts")
    record = api_keys.list_api_keys(state_of(admin).db, account(admin, "admin").id)[0]
    page = admin.get("/api-keys").text
    assert "laptop scripts" in page
    assert record.prefix in page


def test_create_rejects_empty_name(admin: TestClient) -> None:
    response = create_key(admin, "   ")
    assert response.status_code == 422
    assert "API key name" in response.text
    assert api_keys.list_api_keys(state_of(admin).db, account(admin, "admin").id) == []


def test_create_rejects_control_characters(admin: TestClient) -> None:
    response = create_key(admin, "bad\x07name")
    assert response.status_code == 422
    assert "control characters" in response.text


def test_create_needs_csrf_token(admin: TestClient) -> None:
    response = admin.post("/api-keys", data={"name": "laptop"})
    assert response.status_code == 403
    assert api_keys.list_api_keys(state_of(admin).db, account(admin, "admin").id) == []


def test_revoke_marks_key_revoked(admin: TestClient) -> None:
    create_key(admin, "laptop")
    db = state_of(admin).db
    record = api_keys.list_api_keys(db, account(admin, "admin").id)[0]
    response = admin.post(f"/api-keys/{record.id}/revoke", data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 303
    assert api_keys.list_api_keys(db, account(admin, "admin").id)[0].revoked_at is not None
    assert "revoked" in admin.get("/api-keys").text


def test_revoke_of_other_accounts_key_is_404(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    create_key(admin, "admin key")
    db = state_of(admin).db
    record = api_keys.list_api_keys(db, account(admin, "admin").id)[0]
    other = make_client()
    sign_up(other, "bob")
    approve(db, account(admin, "bob").id)
    log_in(other, "bob")
    response = other.post(f"/api-keys/{record.id}/revoke", data={"csrf_token": csrf_token(other)})
    assert response.status_code == 404
    assert api_keys.list_api_keys(db, account(admin, "admin").id)[0].revoked_at is None


def test_revoke_unknown_key_is_404(admin: TestClient) -> None:
    response = admin.post("/api-keys/999/revoke", data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 404
    assert "API key 999 not found" in response.text


def test_revoke_with_bad_id_is_422(admin: TestClient) -> None:
    response = admin.post("/api-keys/abc/revoke", data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 422


def test_revoke_id_out_of_range_is_404(admin: TestClient) -> None:
    huge = "99999999999999999999999"
    response = admin.post(f"/api-keys/{huge}/revoke", data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 404
    assert f"API key {huge} not found" in response.text


def test_nav_links_to_api_keys(admin: TestClient) -> None:
    assert 'href="/api-keys"' in admin.get("/chats").text
