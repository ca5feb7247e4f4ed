"""Two `llmcloud web` processes on one PostgreSQL database, as behind a load balancer."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.deploy.conftest import start_web

SHARED_KEY = "5e" * 32
OTHER_KEY = "07" * 32
PASSWORD = "correct horse battery"


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
