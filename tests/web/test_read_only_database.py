"""The web app on a database that became read-only: 503 with a message, and /readyz fails."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from llmcloud.auth import accounts, api_key_cache, api_keys
from llmcloud.db.models import Role
from llmcloud.web.deps import WebState
from tests.db.read_only import read_only
from tests.web.conftest import FAKE_MODEL, PASSWORD, csrf_token, log_in, sign_up

READ_ONLY_MESSAGE = "the server's database is read-only"


@pytest.fixture
def admin(make_client: Callable[..., TestClient], database_url: str) -> TestClient:
    """A client logged in as the admin, on an app whose database is at database_url."""
    client = make_client(database_url=database_url)
    assert sign_up(client, "admin").status_code == 303
    return client


def state_of(client: TestClient) -> WebState:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    return state


def test_login_gets_503_page(admin: TestClient, database_url: str) -> None:
    admin.cookies.clear()

    with read_only(database_url, state_of(admin).db):
        response = log_in(admin, "admin", PASSWORD)

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert READ_ONLY_MESSAGE in html.unescape(response.text)


def test_json_request_gets_503_json(admin: TestClient, database_url: str) -> None:
    token = csrf_token(admin)

    with read_only(database_url, state_of(admin).db):
        response = admin.post(
            "/chats", data={"csrf_token": token}, headers={"Accept": "application/json"}
        )

    assert response.status_code == 503
    assert READ_ONLY_MESSAGE in response.json()["error"]


def test_api_gets_openai_error_body(admin: TestClient, database_url: str) -> None:
    db = state_of(admin).db
    user = accounts.create_account(db, "scripts", None, role=Role.USER)
    key = api_keys.create_api_key(db, user.id, "laptop").key
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "Hello"}]}

    # An uncached key is checked in the database, which records its use.
    api_key_cache.invalidate()
    labels = {"outcome": "invalid_key"}
    invalid_before = REGISTRY.get_sample_value("llmcloud_api_key_requests_total", labels)

    with read_only(database_url, db):
        response = admin.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    error = response.json()["error"]
    assert response.status_code == 503
    assert READ_ONLY_MESSAGE in error["message"]
    assert error["type"] == "server_error"
    # A valid key on a read-only database is not counted as an invalid one.
    invalid_after = REGISTRY.get_sample_value("llmcloud_api_key_requests_total", labels)
    assert invalid_after == invalid_before


def test_read_only_request_logs_no_traceback(
    admin: TestClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = csrf_token(admin)
    db = state_of(admin).db

    with read_only(database_url, db), caplog.at_level(logging.INFO):
        admin.post("/chats", data={"csrf_token": token})

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert errors[0].name == "llmcloud.db"
    assert db.safe_url in errors[0].getMessage()
    assert all(record.exc_info is None for record in caplog.records)


def test_read_only_login_logs_one_error(
    admin: TestClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin.cookies.clear()

    with read_only(database_url, state_of(admin).db), caplog.at_level(logging.INFO):
        log_in(admin, "admin", PASSWORD)

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert all(record.exc_info is None for record in caplog.records)


def test_readyz_names_read_only_database(admin: TestClient, database_url: str) -> None:
    db = state_of(admin).db

    with read_only(database_url, db):
        response = admin.get("/readyz")

    assert response.status_code == 503
    assert f"database {db.safe_url} is read-only" in response.json()["failed"]["database"]
