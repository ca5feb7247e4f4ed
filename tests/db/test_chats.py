from __future__ import annotations

import pytest

from llmcloud.db import Database, chats
from llmcloud.db.errors import InvalidInput, NotFound
from llmcloud.db.models import MessageRole, MessageStatus, Role, User


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


def test_create_chat_uses_default_title(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    assert chat.title == chats.DEFAULT_TITLE


def test_create_chat_gives_random_ids(database: Database, alice: int) -> None:
    first = chats.create_chat(database, alice)
    second = chats.create_chat(database, alice)
    assert first.id != second.id
    assert len(first.id) == 16


def test_get_chat_returns_own_chat(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice, title="Plans", model="smollm2")
    loaded = chats.get_chat(database, alice, chat.id)
    assert (loaded.title, loaded.model) == ("Plans", "smollm2")


def test_get_chat_of_other_user_looks_missing(database: Database, alice: int, bob: int) -> None:
    chat = chats.create_chat(database, alice)
    with pytest.raises(NotFound) as foreign:
        chats.get_chat(database, bob, chat.id)
    with pytest.raises(NotFound) as missing:
        chats.get_chat(database, bob, "AAAAAAAAAAAAAAAA")
    assert foreign.value.status_code == missing.value.status_code == 404
    assert foreign.value.message == f"chat '{chat.id}' not found"
    assert missing.value.message == "chat 'AAAAAAAAAAAAAAAA' not found"


@pytest.mark.parametrize(
    "action",
    [
        lambda db, user, chat: chats.rename_chat(db, user, chat, "mine now"),
        lambda db, user, chat: chats.delete_chat(db, user, chat),
        lambda db, user, chat: chats.add_message(db, user, chat, "user", "hello"),
        lambda db, user, chat: chats.list_messages(db, user, chat),
        lambda db, user, chat: chats.set_system_prompt(db, user, chat, "be evil"),
        lambda db, user, chat: chats.set_chat_model(db, user, chat, "other"),
        lambda db, user, chat: chats.remove_last_answer(db, user, chat),
    ],
    ids=["rename", "delete", "add_message", "list_messages", "system_prompt", "model", "regen"],
)
def test_other_user_cannot_touch_chat(
    database: Database, alice: int, bob: int, action: object
) -> None:
    chat = chats.create_chat(database, alice, title="Private")
    chats.add_message(database, alice, chat.id, "user", "secret")
    with pytest.raises(NotFound):
        action(database, bob, chat.id)  # type: ignore[operator]
    assert chats.get_chat(database, alice, chat.id).title == "Private"
    assert [m.content for m in chats.list_messages(database, alice, chat.id)] == ["secret"]


def test_list_chats_most_recent_first(database: Database, alice: int) -> None:
    old = chats.create_chat(database, alice, title="old")
    new = chats.create_chat(database, alice, title="new")
    chats.add_message(database, alice, old.id, "user", "bump")
    listed = chats.list_chats(database, alice)
    assert [chat.id for chat in listed] == [old.id, new.id]


def test_list_chats_shows_only_own_chats(database: Database, alice: int, bob: int) -> None:
    chats.create_chat(database, alice, title="alice's")
    assert chats.list_chats(database, bob) == []


def test_list_chats_searches_titles_ignoring_case(database: Database, alice: int) -> None:
    matching = chats.create_chat(database, alice, title="Holiday Plans")
    chats.create_chat(database, alice, title="Work")
    listed = chats.list_chats(database, alice, search="holiday")
    assert [chat.id for chat in listed] == [matching.id]


def test_list_chats_searches_message_text(database: Database, alice: int) -> None:
    matching = chats.create_chat(database, alice, title="one")
    chats.create_chat(database, alice, title="two")
    chats.add_message(database, alice, matching.id, "assistant", "The capital is Paris.")
    listed = chats.list_chats(database, alice, search="PARIS")
    assert [chat.id for chat in listed] == [matching.id]


def test_list_chats_search_treats_wildcards_literally(database: Database, alice: int) -> None:
    matching = chats.create_chat(database, alice, title="100% done")
    chats.create_chat(database, alice, title="1000 done")
    assert [chat.id for chat in chats.list_chats(database, alice, search="0%")] == [matching.id]
    assert chats.list_chats(database, alice, search="_") == []


def test_list_chats_pages(database: Database, alice: int) -> None:
    for index in range(3):
        chats.create_chat(database, alice, title=f"chat {index}")
    first = chats.list_chats(database, alice, limit=2)
    rest = chats.list_chats(database, alice, limit=2, offset=2)
    assert len(first) == 2
    assert len(rest) == 1


@pytest.mark.parametrize(
    ("limit", "offset"), [(0, 0), (201, 0), (10, -1), (10, 2**63), (10, 10**20)]
)
def test_list_chats_rejects_bad_paging(
    database: Database, alice: int, limit: int, offset: int
) -> None:
    with pytest.raises(InvalidInput, match=r"out of range|negative"):
        chats.list_chats(database, alice, limit=limit, offset=offset)


def test_rename_chat_normalises_spaces(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    assert (
        chats.rename_chat(database, alice, chat.id, "  Trip \n to   Rome ").title == "Trip to Rome"
    )


@pytest.mark.parametrize("title", ["", "   ", "x" * 201])
def test_rename_chat_rejects_bad_title_and_keeps_old(
    database: Database, alice: int, title: str
) -> None:
    chat = chats.create_chat(database, alice, title="Kept")
    with pytest.raises(InvalidInput, match=r"chat title .* expected 1 to 200"):
        chats.rename_chat(database, alice, chat.id, title)
    assert chats.get_chat(database, alice, chat.id).title == "Kept"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("a\x00b", "U+0000 at character 1"),
        ("bell\x07", "U+0007 at character 4"),
        ("\x1b[1mbold", "U+001B at character 0"),
        ("del\x7f", "U+007F at character 3"),
        ("c1 \x9b", "U+009B at character 3"),
    ],
)
def test_rename_chat_rejects_control_characters(
    database: Database, alice: int, title: str, expected: str
) -> None:
    chat = chats.create_chat(database, alice, title="Kept")
    with pytest.raises(InvalidInput) as error:
        chats.rename_chat(database, alice, chat.id, title)
    assert f"contains the control character {expected}" in error.value.message
    assert chats.get_chat(database, alice, chat.id).title == "Kept"


def test_rename_chat_keeps_format_characters(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467 \u05e9\u05dc\u05d5\u05dd\u200f"
    assert chats.rename_chat(database, alice, chat.id, family).title == family


def test_set_system_prompt_rejects_nul_and_keeps_old(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice, system_prompt="Be brief.")
    with pytest.raises(InvalidInput, match="system prompt contains a NUL character"):
        chats.set_system_prompt(database, alice, chat.id, "Be\x00long.")
    assert chats.get_chat(database, alice, chat.id).system_prompt == "Be brief."


def test_set_system_prompt_blank_removes_it(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice, system_prompt="Answer in French.")
    assert chats.set_system_prompt(database, alice, chat.id, "  ").system_prompt is None


def test_add_message_keeps_order(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    for text in ("one", "two", "three"):
        chats.add_message(database, alice, chat.id, "user", text)
    contents = [m.content for m in chats.list_messages(database, alice, chat.id)]
    assert contents == ["one", "two", "three"]


def test_add_message_stores_interrupted_answer(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    chats.add_message(
        database,
        alice,
        chat.id,
        MessageRole.ASSISTANT,
        "The answer is",
        status=MessageStatus.INTERRUPTED,
        error="backend engine-1 closed the stream",
        completion_tokens=3,
    )
    (stored,) = chats.list_messages(database, alice, chat.id)
    assert stored.status is MessageStatus.INTERRUPTED
    assert stored.content == "The answer is"
    assert stored.error == "backend engine-1 closed the stream"


def test_add_message_rejects_unknown_role(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    with pytest.raises(InvalidInput, match="message role 'bot' is unknown; expected one of"):
        chats.add_message(database, alice, chat.id, "bot", "hi")
    assert chats.list_messages(database, alice, chat.id) == []


def test_add_message_rejects_negative_tokens(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    with pytest.raises(InvalidInput, match="prompt_tokens -1 is negative"):
        chats.add_message(database, alice, chat.id, "assistant", "x", prompt_tokens=-1)


def test_add_message_rejects_too_many_tokens(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    with pytest.raises(InvalidInput, match="completion_tokens 2147483648 is too large"):
        chats.add_message(database, alice, chat.id, "assistant", "x", completion_tokens=2**31)
    assert chats.list_messages(database, alice, chat.id) == []


def test_add_message_stores_largest_token_count(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    chats.add_message(
        database, alice, chat.id, "assistant", "x", prompt_tokens=chats.MAX_TOKEN_COUNT
    )
    (stored,) = chats.list_messages(database, alice, chat.id)
    assert stored.prompt_tokens == chats.MAX_TOKEN_COUNT


def test_add_message_rejects_nul_in_prompt(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    with pytest.raises(InvalidInput, match=r"message contains a NUL character .* at character 5"):
        chats.add_message(database, alice, chat.id, "user", "hello\x00")
    assert chats.list_messages(database, alice, chat.id) == []


def test_remove_last_answer_deletes_assistant_message(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    chats.add_message(database, alice, chat.id, "user", "question")
    chats.add_message(database, alice, chat.id, "assistant", "answer")
    removed = chats.remove_last_answer(database, alice, chat.id)
    assert removed is not None
    assert removed.content == "answer"
    assert [m.content for m in chats.list_messages(database, alice, chat.id)] == ["question"]


def test_remove_last_answer_keeps_user_message(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    chats.add_message(database, alice, chat.id, "user", "question")
    assert chats.remove_last_answer(database, alice, chat.id) is None
    assert len(chats.list_messages(database, alice, chat.id)) == 1


def test_delete_chat_removes_it(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    chats.add_message(database, alice, chat.id, "user", "hi")
    chats.delete_chat(database, alice, chat.id)
    with pytest.raises(NotFound):
        chats.get_chat(database, alice, chat.id)


def test_answer_nul_replaced(database: Database, alice: int) -> None:
    chat = chats.create_chat(database, alice)
    chats.add_message(database, alice, chat.id, "assistant", "before\x00after")
    assert chats.list_messages(database, alice, chat.id)[0].content == "before\ufffdafter"
