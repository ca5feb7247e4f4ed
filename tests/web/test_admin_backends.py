"""The stored-backends follower: how one web instance picks up another's backend changes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmcloud.db import backends as stored_backends
from llmcloud.db import open_database
from llmcloud.gateway import Gateway
from llmcloud.web import create_app
from llmcloud.web.admin_backends import follow_stored_backends
from llmcloud.web.deps import WebState
from tests.web.conftest import web_settings

CONFIGURED_URL = "http://127.0.0.1:9"


def _state(tmp_path: Path) -> WebState:
    settings = web_settings(tmp_path / "data", CONFIGURED_URL)
    database = open_database(f"sqlite:///{tmp_path / 'llmcloud.db'}")
    database.upgrade()
    gateway = Gateway.from_settings(settings)
    app = create_app(settings, database=database, gateway=gateway)
    state: WebState = app.state.web
    return state


def _backend_names(state: WebState) -> list[str]:
    return [backend.name for backend in state.models.status().backends]


async def _follow_briefly(state: WebState, seconds: float) -> None:
    follower = asyncio.create_task(follow_stored_backends(state, 0.01, ()))
    await asyncio.sleep(seconds)
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)


def test_follower_applies_stored_backend(tmp_path: Path) -> None:
    state = _state(tmp_path)
    stored_backends.add_backend(
        state.db, name="stored", kind="openai", base_url="http://127.0.0.1:8"
    )

    asyncio.run(_follow_briefly(state, 0.3))

    assert _backend_names(state) == ["fake", "stored"]


def test_follower_keeps_backends_when_database_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state(tmp_path)
    with state.db.transaction() as session:
        session.execute(sa.text("DROP TABLE backends"))

    with caplog.at_level(logging.WARNING, logger="llmcloud.web"):
        asyncio.run(_follow_briefly(state, 0.3))

    assert _backend_names(state) == ["fake"]
    warnings = [record for record in caplog.records if "stored backends failed" in record.message]
    assert len(warnings) == 1
