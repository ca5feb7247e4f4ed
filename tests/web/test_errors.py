"""Unexpected errors through a real uvicorn server: one log record, a readable 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmcloud.web import create_app
from tests.conftest import RunningServer
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, web_settings


def _raise_error() -> None:
    raise RuntimeError("broken on purpose")


@pytest.fixture
def server(tmp_path: Path, fake_backend: FakeBackend) -> Iterator[RunningServer]:
    app = create_app(web_settings(tmp_path / "data", fake_backend.url), hasher=CHEAP_HASHER)
    app.add_api_route("/api/broken/{item}", _raise_error)
    app.add_api_route("/broken", _raise_error)
    running = RunningServer(app).start()
    yield running
    running.stop()


def test_unexpected_error_logged_once(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = httpx.get(f"{server.url}/api/broken/7")
        # The server may log after the response is sent, so it is stopped before counting.
        server.stop()

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert response.status_code == 500
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert errors[0].name == "llmcloud.web"
    assert errors[0].exc_info is not None
    assert "/api/broken/7 (route /api/broken/{item})" in errors[0].getMessage()


def test_unexpected_error_names_request_id(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = httpx.get(f"{server.url}/api/broken/7")

    request_id = response.json()["error"].split("request id ")[1].split(")")[0]
    assert f"request id {request_id}" in caplog.records[0].getMessage()
    assert "broken on purpose" not in response.text


def test_unexpected_error_page_is_html(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/broken", headers={"Accept": "text/html"})

    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "internal error (request id" in response.text
    assert "content-security-policy" in response.headers
