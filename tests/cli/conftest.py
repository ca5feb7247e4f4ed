"""Fixtures of the client-command tests: clean settings and an engine whose store they change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmcloud.engine.client import EngineClient
from tests.conftest import BUNDLED_MODEL, RunningServer, start_engine

ENGINE_TOKEN = "cli-test-token"
# A copy of the bundled model that stops after a few tokens, so that answers take little time.
SHORT_MODEL = "short:latest"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own config file and LLMCLOUD_* variables out of the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("LLMCLOUD_CONFIG", "LLMCLOUD_ENGINE_URL", "LLMCLOUD_ENGINE_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def private_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An engine that only these tests use, so they may add and delete models; it needs a token."""
    server = start_engine(tmp_path_factory.mktemp("cli-engine"), engine_token=ENGINE_TOKEN)
    with EngineClient(server.url, ENGINE_TOKEN) as client:
        for _ in client.create(SHORT_MODEL, from_=BUNDLED_MODEL, parameters={"num_predict": 6}):
            pass
    yield server
    server.stop()


@pytest.fixture
def private_url(private_engine: RunningServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The private engine's URL, with its token in LLMCLOUD_ENGINE_TOKEN."""
    monkeypatch.setenv("LLMCLOUD_ENGINE_TOKEN", ENGINE_TOKEN)
    return private_engine.url


@pytest.fixture
def private_client(private_url: str) -> Iterator[EngineClient]:
    with EngineClient(private_url, ENGINE_TOKEN) as client:
        yield client
