from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmcloud.db import Database, chats
from llmcloud.db.chat_export import export_chat, export_chats, import_chats, parse_archive
from llmcloud.db.errors import InvalidInput, NotFound
from llmcloud.db.models import MessageStatus, Role, User


def _add_user(database: Database, username: str) -> int:
    with database.transaction() as session:
        user = User(username=username, role=Role.USER)
        session.add(user)
        session.flush()
        return user.id


@pytest.fixture
def alice(database: Database) -> int:
    return _add_user(database, "alice")


@pytest.fixture
def bob(database: Database) -> int:
    return _add_user(database, "bob")


def _chat_with_messages(database: Database, user_id: int, title: str) -> str:
    chat = chats.create_chat(database, user_id, title=title, system_prompt="Be brief.")
    chats.add_message(database, user_id, chat.id, "user", f"question in {title}")
    chats.add_message(
        database,
        user_id,
        chat.id,
        "assistant",
        "partial",
        status=MessageStatus.INTERRUPTED,
        error="backend died",
    )
    return chat.id


def _valid_archive() -> dict[str, Any]:
    return {
        "format": "llmcloud-chats",
        "version": 1,
        "chats": [
            {
                "title": "Imported",
                "created_at": "2024-03-01T10:00:00Z",
                "messages": [{"role": "user", "content": "hello"}],
            }
        ],
    }


def test_export_chat_contains_messages(database: Database, alice: int) -> None:
    chat_id = _chat_with_messages(database, alice, "Trip")
    exported = export_chat(database, alice, chat_id)
    (chat,) = exported["chats"]
    assert exported["format"] == "llmcloud-chats"
    assert chat["system_prompt"] == "Be brief."
    assert [m["status"] for m in chat["messages"]] == ["complete", "interrupted"]


def test_export_chat_of_other_user_looks_missing(database: Database, alice: int, bob: int) -> None:
    chat_id = _chat_with_messages(database, alice, "Trip")
    with pytest.raises(NotFound, match="not found"):
        export_chat(database, bob, chat_id)


def test_export_chats_round_trips_through_json(database: Database, alice: int, bob: int) -> None:
    _chat_with_messages(database, alice, "first")
    _chat_with_messages(database, alice, "second")
    text = json.dumps(export_chats(database, alice))

    imported = import_chats(database, bob, text)

    original = export_chats(database, alice)["chats"]
    copied = export_chats(database, bob)["chats"]
    assert len(imported) == 2
    assert [c["title"] for c in copied] == [c["title"] for c in original]
    assert [c["messages"] for c in copied] == [c["messages"] for c in original]
    assert {c["id"] for c in copied}.isdisjoint({c["id"] for c in original})


def test_import_chats_ignores_ids_in_file(database: Database, alice: int, bob: int) -> None:
    chat_id = _chat_with_messages(database, alice, "Trip")
    archive = export_chat(database, alice, chat_id)
    (copy,) = import_chats(database, bob, archive)
    assert copy.id != chat_id
    assert chats.get_chat(database, alice, chat_id).user_id == alice


def test_import_chats_accepts_minimal_file(database: Database, alice: int) -> None:
    (chat,) = import_chats(database, alice, _valid_archive())
    (message,) = chats.list_messages(database, alice, chat.id)
    assert chat.title == "Imported"
    assert message.status is MessageStatus.COMPLETE


def test_import_chats_rejects_invalid_json(database: Database, alice: int) -> None:
    with pytest.raises(InvalidInput, match=r"not valid JSON: .* line 1 column 2"):
        import_chats(database, alice, "{oops")


def test_import_chats_rejects_deep_nesting(database: Database, alice: int) -> None:
    with pytest.raises(InvalidInput, match="nested too deeply"):
        import_chats(database, alice, "[" * 100_000 + "]" * 100_000)


def test_import_chats_rejects_lone_surrogate(database: Database, alice: int) -> None:
    text = json.dumps(_valid_archive()).replace('"Imported"', '"Imported \\ud800"')
    with pytest.raises(InvalidInput) as error:
        import_chats(database, alice, text)
    assert "chats.0.title has a lone surrogate (U+D800)" in error.value.message
    assert chats.list_chats(database, alice) == []


def test_import_chats_rejects_other_format(database: Database, alice: int) -> None:
    archive = _valid_archive() | {"format": "chatgpt"}
    with pytest.raises(InvalidInput, match=r"format: .*\(got 'chatgpt'\)"):
        import_chats(database, alice, archive)


def test_import_chats_names_bad_message_field(database: Database, alice: int) -> None:
    archive = _valid_archive()
    archive["chats"][0]["messages"][0]["role"] = "bot"
    with pytest.raises(InvalidInput) as error:
        import_chats(database, alice, archive)
    assert "chats.0.messages.0.role" in error.value.message
    assert "'bot'" in error.value.message


def test_import_chats_rejects_time_without_zone(database: Database, alice: int) -> None:
    archive = _valid_archive()
    archive["chats"][0]["created_at"] = "2024-03-01T10:00:00"
    with pytest.raises(InvalidInput, match=r"chats\.0\.created_at"):
        import_chats(database, alice, archive)


def test_import_chats_rejects_missing_title(database: Database, alice: int) -> None:
    archive = _valid_archive()
    del archive["chats"][0]["title"]
    with pytest.raises(InvalidInput, match=r"chats\.0\.title: Field required"):
        import_chats(database, alice, archive)


def test_failed_import_stores_nothing(database: Database, alice: int) -> None:
    existing = _chat_with_messages(database, alice, "Kept")
    archive = _valid_archive()
    archive["chats"].append({"title": "bad", "messages": [{"role": "user"}]})
    with pytest.raises(InvalidInput, match=r"chats\.1\.messages\.0\.content"):
        import_chats(database, alice, archive)
    assert [chat.id for chat in chats.list_chats(database, alice)] == [existing]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["format", "version", "chats", "title", "messages", "role"]),
        _json_values,
    )
)
def test_parse_archive_rejects_junk_with_invalid_input(data: dict[str, Any]) -> None:
    # Any other exception escaping would be a 500 in the web layer.
    with contextlib.suppress(InvalidInput):
        parse_archive(data)
