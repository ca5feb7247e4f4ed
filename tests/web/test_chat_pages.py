"""Chat pages: list, search, rename, delete, system prompt, export and import."""

from __future__ import annotations

import html
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from llmcloud.auth.accounts import find_account
from llmcloud.db import chats
from llmcloud.db.models import MessageRole
from llmcloud.web.deps import WebState
from tests.web.conftest import csrf_token, sign_up


def state_of(client: TestClient) -> WebState:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    return state


def user_id(client: TestClient, username: str = "admin") -> int:
    user = find_account(state_of(client).db, username)
    assert user is not None
    return user.id


def add_chat(client: TestClient, title: str, *messages: tuple[str, str]) -> str:
    db = state_of(client).db
    chat = chats.create_chat(db, user_id(client), title=title)
    for role, content in messages:
        chats.add_message(db, user_id(client), chat.id, role, content)
    return chat.id


def second_user(admin: TestClient, make_client: Callable[..., TestClient]) -> TestClient:
    state = state_of(admin)
    state.settings = state.settings.model_copy(update={"signup_mode": "open"})
    other = make_client()
    assert sign_up(other, "mallory").headers["location"] == "/chats"
    return other


def test_chat_list_newest_first(admin: TestClient) -> None:
    add_chat(admin, "Older chat")
    add_chat(admin, "Newer chat")
    page = admin.get("/chats").text
    assert page.index("Newer chat") < page.index("Older chat")


def test_chat_list_search_finds_message_text(admin: TestClient) -> None:
    add_chat(admin, "Sky", ("user", "why is the sky blue"))
    add_chat(admin, "Sea", ("user", "why is the sea salty"))
    page = admin.get("/chats", params={"q": "SALTY"}).text
    assert "Sea" in page
    assert "Sky" not in page


def test_chat_list_rejects_long_search(admin: TestClient) -> None:
    response = admin.get("/chats", params={"q": "x" * 201})
    assert response.status_code == 422
    assert "search text has 201 characters" in response.text


@pytest.mark.parametrize("offset", ["99999999999999999999", "9223372036854775808", "-1"])
def test_chat_list_rejects_offset_out_of_range(admin: TestClient, offset: str) -> None:
    response = admin.get("/chats", params={"offset": offset})
    assert response.status_code == 422
    assert f"offset {offset} is out of range; expected 0 to 9223372036854775807" in response.text


def test_chat_list_accepts_largest_offset(admin: TestClient) -> None:
    add_chat(admin, "First page only")
    response = admin.get("/chats", params={"offset": str(2**63 - 1)})
    assert response.status_code == 200
    assert "First page only" not in response.text


def test_chat_list_needs_login(client: TestClient) -> None:
    response = client.get("/chats")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/chats"


def test_new_chat_rejects_missing_csrf_token(admin: TestClient) -> None:
    response = admin.post("/chats", data={})
    assert response.status_code == 403
    assert "missing CSRF token" in response.text


def test_new_chat_accepts_htmx_header_token(admin: TestClient) -> None:
    response = admin.post("/chats", headers={"X-CSRF-Token": csrf_token(admin)})
    assert response.status_code == 303


def test_chat_page_shows_models_and_messages(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Greeting", ("user", "Hi"), ("assistant", "**Hello**"))
    page = admin.get(f"/chats/{chat_id}").text
    assert '<option value="fake-model" selected>fake-model</option>' in page
    assert "<strong>Hello</strong>" in page


def test_chat_page_escapes_user_markup(admin: TestClient) -> None:
    chat_id = add_chat(admin, "<b>title</b>", ("user", "<script>alert(1)</script>"))
    page = admin.get(f"/chats/{chat_id}").text
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;title&lt;/b&gt;" in page


def test_chat_page_sanitises_answer(admin: TestClient) -> None:
    answer = '<script>alert(1)</script> <img src=x onerror="alert(2)"> [link](javascript:alert(3))'
    chat_id = add_chat(admin, "Attack", ("user", "Hi"), ("assistant", answer))
    page = admin.get(f"/chats/{chat_id}").text
    assert "<script>alert" not in page
    assert "<img" not in page
    assert 'href="javascript:' not in page


def test_chat_page_of_other_account_not_found(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    chat_id = add_chat(admin, "Secret plans", ("user", "the secret"))
    other = second_user(admin, make_client)
    response = other.get(f"/chats/{chat_id}")
    assert response.status_code == 404
    assert "secret" not in response.text


def test_rename_of_other_account_not_found(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    chat_id = add_chat(admin, "Mine")
    other = second_user(admin, make_client)
    response = other.post(
        f"/chats/{chat_id}/rename", data={"title": "Taken", "csrf_token": csrf_token(other)}
    )
    assert response.status_code == 404
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).title == "Mine"


def test_rename_changes_title(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Old")
    data = {"title": "  New   name ", "csrf_token": csrf_token(admin)}
    assert admin.post(f"/chats/{chat_id}/rename", data=data).status_code == 303
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).title == "New name"


def test_rename_rejects_empty_title(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Kept")
    data = {"title": "   ", "csrf_token": csrf_token(admin)}
    response = admin.post(f"/chats/{chat_id}/rename", data=data)
    assert response.status_code == 422
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).title == "Kept"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("a\x00b", "control character U+0000 at character 1"),
        ("a\x1bb", "control character U+001B at character 1"),
        ("\x7f", "control character U+007F at character 0"),
        ("a\x85b\x9fc", "control character U+009F at character 3"),
    ],
)
def test_rename_rejects_control_characters(admin: TestClient, title: str, expected: str) -> None:
    chat_id = add_chat(admin, "Kept")
    data = {"title": title, "csrf_token": csrf_token(admin)}
    response = admin.post(f"/chats/{chat_id}/rename", data=data)
    assert response.status_code == 422
    assert expected in response.text
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).title == "Kept"


def test_system_prompt_rejects_nul(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Chat")
    data = {"system_prompt": "Be\x00brief.", "csrf_token": csrf_token(admin)}
    response = admin.post(f"/chats/{chat_id}/system-prompt", data=data)
    assert response.status_code == 422
    assert "system prompt contains a NUL character (U+0000) at character 2" in response.text
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).system_prompt is None


def test_system_prompt_saved_and_cleared(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Chat")
    db = state_of(admin).db
    data = {"system_prompt": "Be brief.", "csrf_token": csrf_token(admin)}
    admin.post(f"/chats/{chat_id}/system-prompt", data=data)
    assert chats.get_chat(db, user_id(admin), chat_id).system_prompt == "Be brief."
    data["system_prompt"] = ""
    admin.post(f"/chats/{chat_id}/system-prompt", data=data)
    assert chats.get_chat(db, user_id(admin), chat_id).system_prompt is None


def test_delete_removes_chat(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Doomed", ("user", "bye"))
    response = admin.post(f"/chats/{chat_id}/delete", data={"csrf_token": csrf_token(admin)})
    assert response.headers["location"] == "/chats"
    assert admin.get(f"/chats/{chat_id}").status_code == 404


def test_export_then_import_copies_chat(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Exported", ("user", "Hi"), ("assistant", "Hello"))
    exported = admin.get(f"/chats/{chat_id}/export")
    assert exported.headers["content-disposition"].startswith("attachment")
    files = {"file": ("chat.json", exported.content, "application/json")}
    response = admin.post("/chats/import", files=files, data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 303
    copy_id = response.headers["location"].rsplit("/", 1)[-1]
    assert copy_id != chat_id
    copied = chats.list_messages(state_of(admin).db, user_id(admin), copy_id)
    assert [(m.role, m.content) for m in copied] == [
        (MessageRole.USER, "Hi"),
        (MessageRole.ASSISTANT, "Hello"),
    ]


def test_export_all_lists_every_chat(admin: TestClient) -> None:
    add_chat(admin, "One")
    add_chat(admin, "Two")
    archive = admin.get("/chats/export").json()
    assert sorted(chat["title"] for chat in archive["chats"]) == ["One", "Two"]


def test_import_rejects_invalid_file_and_saves_nothing(admin: TestClient) -> None:
    add_chat(admin, "Existing")
    bad = json.dumps({"format": "llmcloud-chats", "version": 1, "chats": [{"title": ""}]})
    files = {"file": ("bad.json", bad.encode(), "application/json")}
    response = admin.post("/chats/import", files=files, data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 422
    assert "chats.0.title" in response.text
    titles = [chat.title for chat in chats.list_chats(state_of(admin).db, user_id(admin))]
    assert titles == ["Existing"]


def _archive_json(**chat: Any) -> str:
    first = {"title": "Imported", "messages": [{"role": "user", "content": "hi"}], **chat}
    return json.dumps({"format": "llmcloud-chats", "version": 1, "chats": [first]})


def _message_json(**message: Any) -> str:
    return _archive_json(messages=[{"role": "user", "content": "hi", **message}])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '{"format": "llmcloud-chats", "version": 1, "chats": [], "x": ' + "9" * 5000 + "}",
            "import file has a number of more than 4300 digits",
        ),
        (
            _message_json(prompt_tokens=10**20),
            "chats.0.messages.0.prompt_tokens: Input should be less than or equal to 2147483647",
        ),
        (
            _archive_json(created_at="0001-01-01T00:00:00+14:00"),
            "chats.0.created_at: Time is out of range once converted to UTC",
        ),
        (
            _archive_json(updated_at="9999-12-31T23:59:59-14:00"),
            "chats.0.updated_at: Time is out of range once converted to UTC",
        ),
        (
            _message_json(created_at="0001-01-01T00:00:00+01:00"),
            "chats.0.messages.0.created_at: Time is out of range",
        ),
        (b"\xff\xfe{}", "import file is not UTF-8 text: byte 0xff at offset 0"),
        (b"\xff\xfe{}", "an export from llmcloud is UTF-8 JSON"),
        (
            json.dumps({"format": "llmcloud-chats", "version": "1", "chats": []}),
            'version: Expected the number 1, not the string "1"',
        ),
        (
            json.dumps({"format": "llmcloud-chats", "version": True, "chats": []}),
            "version: Expected the number 1, not the boolean true",
        ),
        (_archive_json(title="a\x00b"), "chats.0.title: Title contains the control character"),
        (_archive_json(system_prompt="a\x00"), "chats.0.system_prompt: Text contains a NUL"),
        (_message_json(content="a\x00"), "chats.0.messages.0.content: Text contains a NUL"),
    ],
)
def test_import_rejects_unstorable_file(
    admin: TestClient, content: str | bytes, expected: str
) -> None:
    add_chat(admin, "Existing")
    data = content.encode() if isinstance(content, str) else content
    files = {"file": ("bad.json", data, "application/json")}
    response = admin.post("/chats/import", files=files, data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 422
    assert expected in html.unescape(response.text)
    titles = [chat.title for chat in chats.list_chats(state_of(admin).db, user_id(admin))]
    assert titles == ["Existing"]


@pytest.mark.parametrize(
    ("count", "notice"),
    [(0, "The file contains no chats, so nothing was imported."), (3, "Imported 3 chats.")],
)
def test_import_says_how_many_chats(admin: TestClient, count: int, notice: str) -> None:
    archive = {
        "format": "llmcloud-chats",
        "version": 1,
        "chats": [{"title": f"Chat {index}"} for index in range(count)],
    }
    files = {"file": ("chats.json", json.dumps(archive).encode(), "application/json")}
    response = admin.post("/chats/import", files=files, data={"csrf_token": csrf_token(admin)})
    assert response.status_code == 303
    assert response.headers["location"] == f"/chats?imported={count}"
    assert notice in admin.get(response.headers["location"]).text
    assert notice not in admin.get("/chats").text


def test_chat_list_rejects_forged_import_count(admin: TestClient) -> None:
    response = admin.get("/chats", params={"imported": "99999999999999999999"})
    assert response.status_code == 422
    assert "imported" in response.text


def test_import_rejects_oversized_file(make_client: Callable[..., TestClient]) -> None:
    client = make_client(web_max_import_bytes=1024)
    sign_up(client, "admin")
    files = {"file": ("big.json", b" " * 2000, "application/json")}
    response = client.post("/chats/import", files=files, data={"csrf_token": csrf_token(client)})
    assert response.status_code == 422
    assert "larger than 1024 bytes" in response.text


def test_import_on_full_database_answers_507(admin: TestClient) -> None:
    add_chat(admin, "Existing", ("user", "Hi"))
    token = csrf_token(admin)
    engine = state_of(admin).db.engine
    # SQLite answers SQLITE_FULL, as on a full disk, once the file would grow past max_page_count.
    event.listen(engine, "connect", _cap_database_size)
    engine.dispose()
    archive = {
        "format": "llmcloud-chats",
        "version": 1,
        "chats": [{"title": "Big", "messages": [{"role": "user", "content": "x" * 300_000}]}],
    }
    files = {"file": ("big.json", json.dumps(archive).encode(), "application/json")}

    response = admin.post("/chats/import", files=files, data={"csrf_token": token})

    event.remove(engine, "connect", _cap_database_size)
    engine.dispose()
    titles = [chat.title for chat in chats.list_chats(state_of(admin).db, user_id(admin))]
    assert response.status_code == 507
    assert "storage is full, so nothing was saved" in response.text
    assert titles == ["Existing"]


def _cap_database_size(connection: sqlite3.Connection, record: object) -> None:
    (pages,) = connection.execute("PRAGMA page_count").fetchone()
    connection.execute(f"PRAGMA max_page_count = {pages}")


def test_healthz_answers(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_ok_with_healthy_backend(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["backends"] == ["fake"]


def test_readyz_names_failed_backend(make_client: Callable[..., TestClient]) -> None:
    backends = [{"name": "gone", "kind": "openai", "base_url": "http://127.0.0.1:9"}]
    client = make_client(gateway_backends=backends)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "gone" in response.json()["failed"]["backends"]


def test_unknown_page_not_found(client: TestClient) -> None:
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "page /no-such-page not found" in response.text


def test_pages_send_security_headers(client: TestClient) -> None:
    headers = client.get("/login").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_body_over_limit_rejected_before_parsing(make_client: Callable[..., TestClient]) -> None:
    client = make_client(web_max_import_bytes=1024)
    sign_up(client, "admin")
    files = {"file": ("big.json", b" " * 200_000, "application/json")}
    response = client.post("/chats/import", files=files, data={"csrf_token": csrf_token(client)})
    assert response.status_code == 413
    assert "larger than" in response.text


def test_api_body_without_key_gets_401(
    make_client: Callable[..., TestClient],
) -> None:
    # /v1 has a body limit of its own, past web_max_import_bytes, and checks the key first.
    client = make_client(web_max_import_bytes=1024)
    body = b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + b"x" * 200_000

    response = client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
