"""Stored model backends: add, list, remove, and the checks the table needs."""

from __future__ import annotations

import pytest

from llmcloud.db import Database
from llmcloud.db.backends import add_backend, list_backends, remove_backend
from llmcloud.db.errors import Conflict, InvalidInput, NotFound
from llmcloud.db.models import BackendKind


def test_add_backend_is_listed(database: Database) -> None:
    add_backend(database, name="gpu1", kind="ollama", base_url="http://10.0.0.5:11434")
    rows = list_backends(database)
    assert [row.name for row in rows] == ["gpu1"]
    assert rows[0].kind == BackendKind.OLLAMA
    assert rows[0].enabled


def test_list_backends_oldest_first(database: Database) -> None:
    add_backend(database, name="b", kind="openai", base_url="http://b")
    add_backend(database, name="a", kind="openai", base_url="http://a")
    assert [row.name for row in list_backends(database)] == ["b", "a"]


@pytest.mark.parametrize("second_name", ["gpu1", "GPU1"])
def test_add_backend_rejects_taken_name(database: Database, second_name: str) -> None:
    add_backend(database, name="gpu1", kind="ollama", base_url="http://first")
    with pytest.raises(Conflict, match=f"'{second_name}' is already taken by 'gpu1'"):
        add_backend(database, name=second_name, kind="openai", base_url="http://second")
    assert [row.base_url for row in list_backends(database)] == ["http://first"]


def test_add_backend_rejects_unknown_kind(database: Database) -> None:
    with pytest.raises(InvalidInput, match="kind 'grpc' is unknown; expected one of: ollama"):
        add_backend(database, name="gpu1", kind="grpc", base_url="http://first")


@pytest.mark.parametrize(
    ("name", "base_url", "weight", "expected"),
    [
        ("", "http://a", 1, "name '' has 0 characters"),
        ("x" * 65, "http://a", 1, "has 65 characters"),
        ("gpu1", "", 1, "URL has 0 characters"),
        ("gpu1", "http://a", -1, "weight -1 is negative"),
    ],
)
def test_add_backend_rejects_bad_values(
    database: Database, name: str, base_url: str, weight: int, expected: str
) -> None:
    with pytest.raises(InvalidInput, match=expected):
        add_backend(database, name=name, kind="ollama", base_url=base_url, weight=weight)
    assert list_backends(database) == []


def test_remove_backend_deletes_row(database: Database) -> None:
    row = add_backend(database, name="gpu1", kind="ollama", base_url="http://a")
    removed = remove_backend(database, row.id)
    assert removed.name == "gpu1"
    assert list_backends(database) == []


def test_remove_unknown_backend_raises_not_found(database: Database) -> None:
    with pytest.raises(NotFound, match="backend 42 not found"):
        remove_backend(database, 42)
