"""Rejected chat settings forms: the chat page comes back with the error and the typed value."""

from __future__ import annotations

import html

from fastapi.testclient import TestClient

from llmcloud.db import chats
from tests.web.conftest import csrf_token
from tests.web.test_chat_pages import add_chat, state_of, user_id


def test_rename_error_keeps_typed_title(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Kept")
    data = {"title": "   ", "csrf_token": csrf_token(admin)}
    response = admin.post(f"/chats/{chat_id}/rename", data=data)
    assert response.status_code == 422
    assert 'id="title-error"' in response.text
    assert "Not renamed: chat title" in response.text
    assert 'value="   "' in response.text
    assert '<details class="tools" open>' in response.text
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).title == "Kept"


def test_system_prompt_error_keeps_typed_text(admin: TestClient) -> None:
    chat_id = add_chat(admin, "Chat")
    typed = "Answer like a <pirate>. " * 500 + "\x00"
    data = {"system_prompt": typed, "csrf_token": csrf_token(admin)}
    response = admin.post(f"/chats/{chat_id}/system-prompt", data=data)
    assert response.status_code == 422
    assert 'id="system-prompt-error"' in response.text
    assert "Not saved: system prompt" in response.text
    assert html.escape(typed.rstrip("\x00"), quote=False) in response.text
    assert chats.get_chat(state_of(admin).db, user_id(admin), chat_id).system_prompt is None
