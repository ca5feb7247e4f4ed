"""Two `llmcloud web` processes on one PostgreSQL database, as behind a load balancer."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.deploy.conftest import start_web
from tests.gateway.fake_backend import FakeBackend

SHARED_KEY = "5e" * 32
OTHER_KEY = "07" * 32
PASSWORD = "correct horse battery"
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_session_is_valid_on_both_instances(tmp_path: Path, postgres_url: str) -> None:
    settings = {"database_url": postgres_url, "session_secret_key": SHARED_KEY}
    first = start_web(tmp_path / "first", **settings)
    second = start_web(tmp_path / "second", **settings)
    try:
        with httpx.Client(timeout=10.0) as client:
            signup = client.post(
                f"{first.url}/signup",
                data={"username": "alice", "password": PASSWORD, "password_confirm": PASSWORD},
                headers={"Origin": first.url},
            )
            on_first = client.get(f"{first.url}/chats")
            on_second = client.get(f"{second.url}/chats")
    finally:
        first.stop()
        second.stop()

    assert signup.status_code == 303
    assert on_first.status_code == 200
    assert on_second.status_code == 200
    assert "alice" in on_second.text


def test_session_is_rejected_without_login(tmp_path: Path, postgres_url: str) -> None:
    web = start_web(tmp_path / "web", database_url=postgres_url, session_secret_key=SHARED_KEY)
    try:
        response = httpx.get(f"{web.url}/chats", timeout=10.0)
    finally:
        web.stop()

    assert response.status_code in (302, 303)


def test_instance_with_other_key_refuses_to_start(tmp_path: Path, postgres_url: str) -> None:
    first = start_web(tmp_path / "first", database_url=postgres_url, session_secret_key=SHARED_KEY)
    try:
        second = start_web(
            tmp_path / "second", database_url=postgres_url, session_secret_key=OTHER_KEY
        )
        errors = second.stop()
        exit_code = second.process.returncode
        first_still_serves = httpx.get(f"{first.url}/healthz", timeout=5.0).status_code
    finally:
        first.stop()

    assert exit_code == 2
    assert "differs from the one that the database" in errors
    assert "LLMCLOUD_SESSION_SECRET_KEY" in errors
    assert OTHER_KEY not in errors
    assert first_still_serves == 200


def test_instance_with_key_file_must_match_setting(tmp_path: Path, postgres_url: str) -> None:
    first = start_web(tmp_path / "first", database_url=postgres_url, session_secret_key=SHARED_KEY)
    first.stop()

    second = start_web(tmp_path / "second", database_url=postgres_url)
    errors = second.stop()

    assert second.process.returncode == 2
    assert "secrets/session_key" in errors


def _stored_backend_ids(page: str) -> list[str]:
    return re.findall(r'action="/admin/backends/(\d+)/remove"', page)


def _wait_for_page(client: httpx.Client, url: str, condition: Callable[[str], bool]) -> str:
    """Return the backends page of `url` once `condition` holds for it, or the last one seen."""
    deadline = time.monotonic() + 20.0
    page = client.get(f"{url}/admin/backends").text
    while not condition(page) and time.monotonic() < deadline:
        time.sleep(0.2)
        page = client.get(f"{url}/admin/backends").text
    return page


def test_backend_change_reaches_other_instance(tmp_path: Path, postgres_url: str) -> None:
    configured = FakeBackend(("configured-model",)).start()
    added = FakeBackend(("added-model",)).start()
    settings = {
        "database_url": postgres_url,
        "session_secret_key": SHARED_KEY,
        "gateway_backends": json.dumps(
            [{"name": "configured", "kind": "openai", "base_url": configured.url}]
        ),
    }
    first = start_web(tmp_path / "first", **settings)
    second = start_web(tmp_path / "second", **settings)
    try:
        with httpx.Client(timeout=10.0) as client:
            client.post(
                f"{first.url}/signup",
                data={"username": "alice", "password": PASSWORD, "password_confirm": PASSWORD},
                headers={"Origin": first.url},
            )
            csrf = _CSRF_FIELD.search(client.get(f"{first.url}/admin/backends").text)
            assert csrf is not None
            form = {"csrf_token": csrf.group(1), "kind": "openai", "weight": "1"}
            added_response = client.post(
                f"{first.url}/admin/backends",
                data={**form, "name": "added", "base_url": added.url},
                headers={"Origin": first.url},
            )
            after_add = _wait_for_page(client, second.url, lambda page: "added-model" in page)
            backend_ids = _stored_backend_ids(after_add)

            removed_response = client.post(
                f"{first.url}/admin/backends/{backend_ids[0]}/remove",
                data={"csrf_token": csrf.group(1)},
                headers={"Origin": first.url},
            )
            after_remove = _wait_for_page(
                client, second.url, lambda page: "added-model" not in page
            )
    finally:
        first.stop()
        second.stop()
        configured.stop()
        added.stop()

    assert added_response.status_code == 303
    assert "added-model" in after_add
    assert len(backend_ids) == 1
    assert removed_response.status_code == 303
    assert "added-model" not in after_remove
    assert "configured-model" in after_remove
