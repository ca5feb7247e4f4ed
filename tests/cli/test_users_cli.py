"""`llmcloud users create`: accounts made on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.auth.accounts import authenticate, find_account
from llmcloud.cli import app
from llmcloud.db import open_database
from llmcloud.db.database import Database
from llmcloud.db.models import Role

PASSWORD = "correct horse battery"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("LLMCLOUD_DATA_DIR", str(folder))
    monkeypatch.delenv("LLMCLOUD_DATABASE_URL", raising=False)
    return folder


@pytest.fixture
def database(data_dir: Path) -> Database:
    data_dir.mkdir()
    database = open_database(f"sqlite:///{data_dir / 'llmcloud.db'}")
    database.upgrade()
    return database


def create(*args: str, password: str = PASSWORD) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["users", "create", *args, "--password-stdin"], input=f"{password}\n"
    )
    return result.exit_code, result.output


def test_create_makes_an_account_that_can_log_in(database: Database) -> None:
    code, output = create("alice", "--role", "admin")
    assert code == 0, output
    assert "Created account alice" in output
    assert "with role admin" in output
    account = find_account(database, "alice")
    assert account is not None
    assert account.role == Role.ADMIN
    assert authenticate(database, "alice", PASSWORD).id == account.id


@pytest.mark.parametrize(
    ("args", "password", "expected"),
    [
        (("bob", "--role", "root"), PASSWORD, "root"),
        (("bad name!",), PASSWORD, "bad name!"),
        (("bob",), "short", "password"),
    ],
)
def test_create_rejects_bad_input(
    database: Database, args: tuple[str, ...], password: str, expected: str
) -> None:
    code, output = create(*args, password=password)
    assert code == 2
    assert "Error:" in output
    assert expected in output


def test_create_rejects_a_taken_name(database: Database) -> None:
    assert create("alice")[0] == 0
    code, output = create("ALICE")
    assert code == 2
    assert "alice" in output.lower()


def test_create_before_first_start(data_dir: Path) -> None:
    code, output = create("alice")
    assert code == 1
    assert "start llmcloud up or llmcloud web once" in output
