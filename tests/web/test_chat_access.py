"""One answer per chat across sockets, and sockets that lose access to their chat."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from llmcloud.auth.accounts import deactivate, find_account
from llmcloud.db import chats
from llmcloud.db.models import MessageStatus
from llmcloud.web import chat_ws, create_app
from tests.conftest import RunningServer
from tests.deploy.test_live_streams import _sign_up_and_create_chat, _socket
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import (
    CHEAP_HASHER,
    FAKE_MODEL,
    ORIGIN,
    csrf_token,
    log_in,
    new_chat,
    sign_up,
    web_settings,
)
from tests.web.test_chat_ws import (
    connect,
    open_signups,
    receive_until,
    saved_messages,
    send_prompt,
    state_of,
)

PROMPT = {"type": "send", "model": FAKE_MODEL}


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_ws, "ACCESS_CHECK_SECONDS", 0.1)


def closed_code(socket: WebSocketTestSession) -> int:
    """Read from the socket until it closes, and return the close code."""
    while True:
        try:
            socket.receive_json()
        except WebSocketDisconnect as closed:
            return closed.code


def test_second_tab_cannot_answer_while_the_first_does(
    admin: TestClient, fake_backend: FakeBackend
) -> None:
    fake_backend.stall_after = 1
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as first, connect(admin, chat_id) as second:
        send_prompt(first, "Hello")
        receive_until(first, "token")
        send_prompt(second, "Again")
        sent = receive_until(second, "error")[-1]
        page_while_answering = admin.get(f"/chats/{chat_id}").text
        second.send_text('{"type": "regenerate"}')
        regenerated = receive_until(second, "error")[-1]
        first.send_text('{"type": "stop"}')
        receive_until(first, "done")
        fake_backend.stall_after = None
        send_prompt(second, "Later")
        assert receive_until(second, "done", "error")[-1]["type"] == "done"
    assert "An answer to this chat was being written" in page_while_answering
    assert "was being written" not in admin.get(f"/chats/{chat_id}").text
    for error in (sent, regenerated):
        assert "already answering a prompt, sent from another tab" in error["message"]
    contents = [message.content for message in saved_messages(admin, chat_id)]
    assert contents == ["Hello", "Hello", "Later", "Hello, world!"]


def test_log_out_stops_answer(
    admin: TestClient, fake_backend: FakeBackend, quick_checks: None
) -> None:
    fake_backend.stall_after = 1
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "token")
        admin.post("/logout", data={"csrf_token": csrf_token(admin)})
        received = receive_until(socket, "error")
        code = closed_code(socket)
    stopped, error = received[-2:]
    assert stopped["type"] == "done"
    assert stopped["status"] == "interrupted"
    assert stopped["html"] == "<p>Hello</p>\n"
    assert "log in again" in error["message"]
    assert code == 4401
    answer = saved_messages(admin, chat_id)[-1]
    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.error == "the session ended during the answer"


def test_deactivation_stops_the_answer(
    admin: TestClient,
    make_client: Callable[..., TestClient],
    fake_backend: FakeBackend,
    quick_checks: None,
) -> None:
    fake_backend.stall_after = 1
    state = state_of(admin)
    open_signups(admin)
    bob = make_client()
    sign_up(bob, "bob")
    chat_id = new_chat(bob)
    with connect(bob, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "token")
        deactivate(state.db, find_account(state.db, "bob").id)  # type: ignore[union-attr]
        error = receive_until(socket, "error")[-1]
        code = closed_code(socket)
    assert error["message"] == "account 'bob' is deactivated; ask an admin to reactivate it"
    assert code == 4403


def test_deleting_the_chat_stops_its_answer(
    admin: TestClient, fake_backend: FakeBackend, quick_checks: None
) -> None:
    fake_backend.tokens = [f"word{index} " for index in range(400)]
    fake_backend.token_interval = 0.05
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Talk")
        receive_until(socket, "token")
        admin.post(f"/chats/{chat_id}/delete", data={"csrf_token": csrf_token(admin)})
        error = receive_until(socket, "error")[-1]
        code = closed_code(socket)
    assert error["message"] == f"chat {chat_id!r} not found"
    assert code == 4404


def test_live_watcher_is_closed_after_log_out(
    admin: TestClient, make_client: Callable[..., TestClient], quick_checks: None
) -> None:
    chat_id = new_chat(admin)
    other = make_client()
    log_in(other, "admin")
    path = f"/ws/chats/{chat_id}/live"
    with admin.websocket_connect(path, headers={"Origin": ORIGIN}) as watcher:
        # A first answer reaching the watcher shows that it forwards events.
        with connect(other, chat_id) as socket:
            send_prompt(socket, "Hello")
            receive_until(socket, "done")
        receive_until(watcher, "done")
        admin.post("/logout", data={"csrf_token": csrf_token(admin)})
        time.sleep(0.2)
        with connect(other, chat_id) as socket:
            send_prompt(socket, "Hello again")
            receive_until(socket, "done")
        events = [watcher.receive_json()]
        while events[-1]["type"] != "error":
            events.append(watcher.receive_json())
        code = closed_code(watcher)
    assert "log in again" in events[-1]["message"]
    assert code == 4401
    assert not any(event.get("type") == "done" for event in events)


def test_checks_do_not_end_a_live_session(
    admin: TestClient, fake_backend: FakeBackend, quick_checks: None
) -> None:
    fake_backend.tokens = [f"word{index} " for index in range(10)]
    fake_backend.token_interval = 0.05
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Talk")
        done = receive_until(socket, "done", "error")[-1]
    assert done["type"] == "done"
    assert done["status"] == "complete"


def test_live_watcher_is_told_whether_an_answer_runs(
    admin: TestClient, fake_backend: FakeBackend
) -> None:
    chat_id = new_chat(admin)
    path = f"/ws/chats/{chat_id}/live"
    with admin.websocket_connect(path, headers={"Origin": ORIGIN}) as watcher:
        idle = watcher.receive_json()

    fake_backend.stall_after = 1
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "token")
        with admin.websocket_connect(path, headers={"Origin": ORIGIN}) as watcher:
            running = receive_until(watcher, "token")
            socket.send_text('{"type": "stop"}')
            receive_until(socket, "done")
            stopped = receive_until(watcher, "done")[-1]

    # A claimed chat counts as answering before its answer's first event.
    claims = admin.app.state.answer_claims  # type: ignore[attr-defined]
    claim = admin.portal.call(claims.claim, chat_id)  # type: ignore[union-attr]
    with admin.websocket_connect(path, headers={"Origin": ORIGIN}) as watcher:
        claimed = watcher.receive_json()
    admin.portal.call(claim.release)  # type: ignore[union-attr]

    assert idle == {"type": "watching", "answering": False}
    assert running[0] == {"type": "watching", "answering": True}
    assert running[-1]["text"] == "Hello"
    assert stopped["status"] == "interrupted"
    assert claimed == {"type": "watching", "answering": True}


def test_stale_tab_must_reload(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as first, connect(admin, chat_id) as second:
        first.send_text(json.dumps({**PROMPT, "content": "One", "last_message_id": 0}))
        accepted = receive_until(first, "accepted")[-1]
        answer = receive_until(first, "done")[-1]
        # The second tab still shows the empty chat.
        second.send_text(json.dumps({**PROMPT, "content": "Two", "last_message_id": 0}))
        sent = receive_until(second, "error")[-1]
        second.send_text(json.dumps({"type": "regenerate", "last_message_id": 0}))
        regenerated = receive_until(second, "error")[-1]
        second.send_text(json.dumps({**PROMPT, "content": "Two", "last_message_id": "7"}))
        mistyped = receive_until(second, "error")[-1]
        newest = answer["message_id"]
        second.send_text(json.dumps({**PROMPT, "content": "Two", "last_message_id": newest}))
        current = receive_until(second, "accepted", "error")[-1]
        receive_until(second, "done")

    assert accepted["message_id"] < newest
    assert sent["message"] == chat_ws.CHAT_CHANGED
    assert regenerated["message"] == chat_ws.CHAT_CHANGED
    assert "last_message_id" in mistyped["message"]
    assert current["type"] == "accepted"
    contents = [message.content for message in saved_messages(admin, chat_id)]
    assert contents == ["One", "Hello, world!", "Two", "Hello, world!"]


def test_server_stop_saves_reason(tmp_path: Path, fake_backend: FakeBackend) -> None:
    fake_backend.stall_after = 1
    app = create_app(web_settings(tmp_path / "data", fake_backend.url), hasher=CHEAP_HASHER)
    server = RunningServer(app).start()
    try:
        with httpx.Client(timeout=10.0) as client:
            chat_id = _sign_up_and_create_chat(client, server.url)
            with _socket(server.url, f"/ws/chats/{chat_id}", client) as socket:
                socket.send(json.dumps({**PROMPT, "content": "Hello"}))
                while json.loads(socket.recv(timeout=15))["type"] != "token":
                    pass
                server.stop()
    finally:
        server.stop()
    db = app.state.web.db
    account = find_account(db, "alice")
    assert account is not None
    answer = list(chats.list_messages(db, account.id, chat_id))[-1]

    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.error == "the web server stopped during the answer"
