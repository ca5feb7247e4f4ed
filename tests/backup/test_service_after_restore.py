"""After a restore into an empty data dir, the web app starts and serves what it had.

The app runs in-process through Starlette's TestClient, with its gateway on
the fake model backend of the gateway tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmcloud.auth import accounts, api_keys
from llmcloud.backup import operations
from llmcloud.backup.restore import restore_backup
from llmcloud.backup.targets import targets_from_settings
from llmcloud.db.models import Role
from llmcloud.settings import Settings
from llmcloud.web import create_app
from llmcloud.web.deps import WebState
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, ORIGIN, PASSWORD, log_in, web_settings
from tests.web.conftest import new_chat as start_chat


@pytest.fixture
def fake_backend() -> Iterator[FakeBackend]:
    backend = FakeBackend((FAKE_MODEL,)).start()
    yield backend
    backend.stop()


def settings_for(data_dir: Path, backend: FakeBackend, tmp_path: Path) -> Settings:
    return web_settings(
        data_dir,
        backend.url,
        backup_targets=[str(tmp_path / "backups")],
        backup_schedule="",
        backup_verify_schedule="",
    )


def open_client(settings: Settings) -> TestClient:
    app = create_app(settings, hasher=CHEAP_HASHER)
    return TestClient(app, headers={"Origin": ORIGIN}, follow_redirects=False)


def test_web_app_serves_restored_data(
    tmp_path: Path, fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    config = data_dir / "llmcloud.toml"
    config.parent.mkdir()
    config.write_text("web_chat_rate_limit = 7\n")
    monkeypatch.setenv("LLMCLOUD_CONFIG", str(config))
    settings = settings_for(data_dir, fake_backend, tmp_path)

    with open_client(settings) as client:
        state: WebState = client.app.state.web  # type: ignore[attr-defined]
        admin = accounts.create_account(
            state.db, "admin", PASSWORD, role=Role.ADMIN, hasher=CHEAP_HASHER
        )
        key = api_keys.create_api_key(state.db, admin.id, "laptop").key
        assert log_in(client, "admin").status_code == 303
        chat_id = start_chat(client)
        cookies = dict(client.cookies)
        backup = operations.backup_and_prune(settings)
    saved_key = tmp_path / "backup.age"
    shutil.copy(data_dir / "secrets" / "backup.age", saved_key)
    shutil.rmtree(data_dir)

    identities = operations.identities_for(settings, saved_key)
    restore_backup(settings, targets_from_settings(settings), identities, backup.backup_id)
    restored_settings = settings_for(data_dir, fake_backend, tmp_path)

    with open_client(restored_settings) as client:
        models = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        client.cookies.update(cookies)
        chat = client.get(f"/chats/{chat_id}")
        client.cookies.clear()
        login = log_in(client, "admin")

    assert restored_settings.web_chat_rate_limit == 7
    assert models.status_code == 200
    assert [model["id"] for model in models.json()["data"]] == [FAKE_MODEL]
    assert chat.status_code == 200
    assert login.status_code == 303
