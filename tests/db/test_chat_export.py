from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from llmcloud.db import Database, chats
from llmcloud.db.chat_export import export_chat, export_chats, import_chats, parse_archive
from llmcloud.db.chats import MAX_TOKEN_COUNT
from llmcloud.db.errors import InvalidInput, NotFound
from llmcloud.db.models import Chat, MessageStatus, Role, User


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


def test_import_chats_stores_extreme_values(database: Database, alice: int) -> None:
    archive = _valid_archive()
    chat = archive["chats"][0]
    chat["created_at"] = "0001-01-01T00:00:00Z"
    chat["updated_at"] = "9999-12-31T23:59:59-00:00"
    chat["messages"][0].update(
        content="tab\tnewline\nescape\x1b", prompt_tokens=MAX_TOKEN_COUNT, completion_tokens=0
    )
    (imported,) = import_chats(database, alice, archive)
    (message,) = chats.list_messages(database, alice, imported.id)
    stored = chats.get_chat(database, alice, imported.id)
    assert stored.created_at == datetime(1, 1, 1, tzinfo=UTC)
    assert stored.updated_at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert message.content == "tab\tnewline\nescape\x1b"
    assert message.prompt_tokens == MAX_TOKEN_COUNT


def test_export_keeps_title_that_import_rejects(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    with database.transaction() as session:
        session.execute(sa.update(Chat).where(Chat.id == chat.id).values(title="old\x1btitle"))
    archive = export_chat(database, alice, chat.id)
    assert archive["chats"][0]["title"] == "old\x1btitle"
    with pytest.raises(InvalidInput, match=r"chats\.0\.title: Title contains the control"):
        import_chats(database, alice, archive)


def test_import_chats_accepts_utf8_with_bom(database: Database, alice: int) -> None:
    data = b"\xef\xbb\xbf" + json.dumps(_valid_archive()).encode()
    assert [chat.title for chat in import_chats(database, alice, data)] == ["Imported"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1", 'version: Expected the number 1, not the string "1"'),
        (True, "version: Expected the number 1, not the boolean true"),
        (None, "version: Expected the number 1, not null"),
        ([1], "version: Expected the number 1, not an array"),
        (2, "version: Version 2 is not supported; this llmcloud reads only version 1"),
    ],
)
def test_import_chats_rejects_other_version(
    database: Database, alice: int, version: object, expected: str
) -> None:
    archive = _valid_archive() | {"version": version}
    with pytest.raises(InvalidInput) as error:
        import_chats(database, alice, archive)
    assert expected in error.value.message
    assert "(got" not in error.value.message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("prompt_tokens", MAX_TOKEN_COUNT + 1, "less than or equal to 2147483647"),
        ("completion_tokens", 10**20, "less than or equal to 2147483647"),
        ("completion_tokens", -1, "greater than or equal to 0"),
        ("prompt_tokens", True, "valid integer"),
        ("created_at", "0001-01-01T00:00:00+14:00", "out of range once converted to UTC"),
        ("created_at", "9999-12-31T23:59:59-00:01", "out of range once converted to UTC"),
        ("content", "a\x00b", "NUL character (U+0000) at character 1"),
        ("error", "\x00", "NUL character (U+0000) at character 0"),
        ("model", "m\x00", "NUL character (U+0000) at character 1"),
    ],
)
def test_import_chats_rejects_unstorable_message(
    database: Database, alice: int, field: str, value: object, expected: str
) -> None:
    archive = _valid_archive()
    archive["chats"][0]["messages"][0][field] = value
    with pytest.raises(InvalidInput) as error:
        import_chats(database, alice, archive)
    assert f"chats.0.messages.0.{field}: " in error.value.message
    assert expected in error.value.message
    assert chats.list_chats(database, alice) == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("title", "a\x00b", "control character U+0000 at character 1"),
        ("title", "\x1b[31mred", "control character U+001B at character 0"),
        ("system_prompt", "be\x00brief", "NUL character (U+0000) at character 2"),
        ("model", "\x00", "NUL character (U+0000) at character 0"),
        ("updated_at", "0001-01-01T00:00:00+00:01", "out of range once converted to UTC"),
    ],
)
def test_import_chats_rejects_unstorable_chat(
    database: Database, alice: int, field: str, value: str, expected: str
) -> None:
    archive = _valid_archive()
    archive["chats"][0][field] = value
    with pytest.raises(InvalidInput) as error:
        import_chats(database, alice, archive)
    assert f"chats.0.{field}: " in error.value.message
    assert expected in error.value.message


def test_import_chats_rejects_overlong_number(database: Database, alice: int) -> None:
    text = json.dumps(_valid_archive())[:-1] + ', "extra": ' + "9" * 5000 + "}"
    with pytest.raises(InvalidInput, match="import file has a number of more than 4300 digits"):
        import_chats(database, alice, text)


@pytest.mark.parametrize("data", [b"\xff\xfe{}", json.dumps(_valid_archive()).encode("utf-16")])
def test_import_chats_rejects_other_encodings(database: Database, alice: int, data: bytes) -> None:
    with pytest.raises(InvalidInput) as error:
        import_chats(database, alice, data)
    assert "import file is not UTF-8 text: byte 0xff at offset 0" in error.value.message
    assert "an export from llmcloud is UTF-8 JSON" in error.value.message


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
