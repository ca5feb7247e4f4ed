"""The chat WebSocket: streaming, saving, Stop, Regenerate, queueing and bad messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from llmcloud.auth.accounts import deactivate, find_account
from llmcloud.db import chats
from llmcloud.db.models import MessageStatus
from llmcloud.gateway import NoBackendAvailable
from llmcloud.web.chat_stream import LENGTH_LIMIT, AnswerStream, storable_count
from llmcloud.web.chat_ws import shorten_title
from llmcloud.web.deps import WebState
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import FAKE_MODEL, ORIGIN, csrf_token, new_chat, sign_up


def state_of(client: TestClient) -> WebState:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    return state


def connect(client: TestClient, chat_id: str, origin: str = ORIGIN) -> Any:
    return client.websocket_connect(f"/ws/chats/{chat_id}", headers={"Origin": origin})


def send_prompt(socket: WebSocketTestSession, content: str, model: str = FAKE_MODEL) -> None:
    socket.send_text(json.dumps({"type": "send", "content": content, "model": model}))


def receive_until(socket: WebSocketTestSession, *types: str) -> list[dict[str, Any]]:
    """Return the messages received up to and including the first of one of `types`."""
    received = []
    while True:
        message = socket.receive_json()
        received.append(message)
        if message["type"] in types:
            return received


def open_signups(client: TestClient) -> None:
    """Make later sign-ups users at once, as signup_mode = "open" does."""
    state = state_of(client)
    state.settings = state.settings.model_copy(update={"signup_mode": "open"})


def saved_messages(client: TestClient, chat_id: str) -> list[Any]:
    state = state_of(client)
    user = find_account(state.db, "admin")
    assert user is not None
    return list(chats.list_messages(state.db, user.id, chat_id))


def test_send_streams_tokens_then_done(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        received = receive_until(socket, "done", "error")
    tokens = [message["text"] for message in received if message["type"] == "token"]
    # Tokens that reach the gateway in one read are relayed as one message.
    assert tokens[0] == "Hello"
    assert "".join(tokens) == "Hello, world!"
    assert received[-1]["type"] == "done"
    assert received[-1]["status"] == "complete"
    assert received[-1]["html"] == "<p>Hello, world!</p>\n"


def test_send_saves_prompt_and_answer(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "done")
    saved = saved_messages(admin, chat_id)
    assert [(message.role, message.content) for message in saved] == [
        ("user", "Hello"),
        ("assistant", "Hello, world!"),
    ]
    assert saved[1].status == MessageStatus.COMPLETE
    assert saved[1].model == FAKE_MODEL


def test_first_prompt_names_chat(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Why is the sky blue?\nAnd the sea?")
        received = receive_until(socket, "done")
    assert {"type": "title", "title": "Why is the sky blue?"} in received
    assert "Why is the sky blue?" in admin.get("/chats").text


def test_system_prompt_goes_to_backend(admin: TestClient, fake_backend: FakeBackend) -> None:
    chat_id = new_chat(admin)
    state = state_of(admin)
    user_id = find_account(state.db, "admin").id  # type: ignore[union-attr]
    chats.set_system_prompt(state.db, user_id, chat_id, "Answer in French.")
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "done")
    body = fake_backend.chat_requests()[-1].body
    assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert body["messages"][-1] == {"role": "user", "content": "Hello"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON array; expected an object"),
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('{"type": "send", "n": ' + "9" * 5000 + "}", "a number of more than 4300 digits"),
        (
            '{"type": "send", "content": "a\\ud800", "model": "fake-model"}',
            "field content has a lone surrogate (U+D800) at character 1",
        ),
        ('{"type": "dance"}', 'type "dance" is unknown'),
        ('{"content": "hi"}', "type null is unknown"),
        ('{"type": "send", "model": "fake-model"}', "field content: Field required"),
        ('{"type": "send", "content": 5, "model": "fake-model"}', "field content"),
        ('{"type": "send", "content": "   ", "model": "fake-model"}', "prompt is empty"),
        ('{"type": "send", "content": "hi", "model": " "}', "field model is empty"),
    ],
)
def test_malformed_message_gets_error(admin: TestClient, text: str, expected: str) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        socket.send_text(text)
        error = socket.receive_json()
        assert error["type"] == "error"
        assert expected in error["message"]
        send_prompt(socket, "Hello")
        assert receive_until(socket, "done", "error")[-1]["type"] == "done"
    assert len(saved_messages(admin, chat_id)) == 2


def test_binary_message_gets_error(admin: TestClient) -> None:
    with connect(admin, new_chat(admin)) as socket:
        socket.send_bytes(b"\x00\x01")
        assert "binary messages" in socket.receive_json()["message"]


def test_oversized_prompt_rejected_and_not_saved(make_client: Callable[..., TestClient]) -> None:
    client = make_client(web_max_prompt_length=100)
    sign_up(client, "admin")
    chat_id = new_chat(client)
    with connect(client, chat_id) as socket:
        send_prompt(socket, "x" * 101)
        error = socket.receive_json()
    assert "prompt has 101 characters; expected at most 100" in error["message"]
    assert saved_messages(client, chat_id) == []


def test_other_accounts_chat_not_found(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    chat_id = new_chat(admin)
    open_signups(admin)
    other = make_client()
    sign_up(other, "mallory")
    with connect(other, chat_id) as socket:
        error = socket.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
    assert error["message"] == f"chat {chat_id!r} not found"
    assert closed.value.code == 4404


def test_unknown_chat_not_found(admin: TestClient) -> None:
    with connect(admin, "no-such-chat") as socket:
        assert "not found" in socket.receive_json()["message"]


def test_socket_without_session_closed(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    chat_id = new_chat(admin)
    stranger = make_client()
    with connect(stranger, chat_id) as socket:
        error = socket.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
    assert "log in again" in error["message"]
    assert closed.value.code == 4401


def test_socket_from_other_origin_rejected(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        connect(admin, chat_id, "http://evil.example"),
    ):
        pass
    assert closed.value.code == 1008


def test_deactivated_account_gets_error_on_send(
    admin: TestClient, make_client: Callable[..., TestClient]
) -> None:
    state = state_of(admin)
    open_signups(admin)
    bob = make_client()
    sign_up(bob, "bob")
    chat_id = new_chat(bob)
    with connect(bob, chat_id) as socket:
        # An answer to a message shows that the socket has checked its session.
        socket.send_text("{}")
        socket.receive_json()
        deactivate(state.db, find_account(state.db, "bob").id)  # type: ignore[union-attr]
        send_prompt(socket, "Hello")
        error = socket.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
    assert error["message"] == "account 'bob' is deactivated; ask an admin to reactivate it"
    assert closed.value.code == 4403


def test_stop_saves_partial_answer(admin: TestClient, fake_backend: FakeBackend) -> None:
    fake_backend.tokens = [f"word{index} " for index in range(50)]
    fake_backend.token_interval = 0.05
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Talk")
        receive_until(socket, "token")
        socket.send_text('{"type": "stop"}')
        done = receive_until(socket, "done")[-1]
    assert done["status"] == "interrupted"
    assert done["reason"] == "stopped by the user"
    answer = saved_messages(admin, chat_id)[-1]
    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.content.startswith("word0 ")
    assert answer.error == "stopped by the user"


def test_answer_cut_at_length_limit(admin: TestClient, fake_backend: FakeBackend) -> None:
    fake_backend.done_reason = "length"
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Talk")
        done = receive_until(socket, "done")[-1]
    page = admin.get(f"/chats/{chat_id}").text
    assert done["status"] == "complete"
    assert done["done_reason"] == "length"
    assert done["reason"] == LENGTH_LIMIT
    answer = saved_messages(admin, chat_id)[-1]
    assert answer.status == MessageStatus.COMPLETE
    assert answer.error == LENGTH_LIMIT
    assert f"Cut off: {LENGTH_LIMIT}" in page


def test_backend_dying_saves_partial_answer(admin: TestClient, fake_backend: FakeBackend) -> None:
    fake_backend.die_after = 2
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        error = receive_until(socket, "error", "done")[-1]
    assert error["type"] == "error"
    assert error["partial"] is True
    answer = saved_messages(admin, chat_id)[-1]
    assert answer.content == "Hello,"
    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.error == error["message"]
    assert error["message"].endswith("; press Regenerate to try again")


def test_interrupted_answer_shown_after_reload(
    admin: TestClient, fake_backend: FakeBackend
) -> None:
    fake_backend.die_after = 2
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "error")
    page = admin.get(f"/chats/{chat_id}").text
    assert "Hello," in page
    assert "Interrupted: backend fake failed during the answer" in page


def test_regenerate_replaces_last_answer(admin: TestClient, fake_backend: FakeBackend) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "done")
        fake_backend.tokens = ["Bonjour"]
        socket.send_text('{"type": "regenerate"}')
        receive_until(socket, "done")
    saved = saved_messages(admin, chat_id)
    assert [message.content for message in saved] == ["Hello", "Bonjour"]


@pytest.mark.parametrize(
    "request_text", ['{"type": "regenerate", "model": "fake-model"}', '{"type": "regenerate"}']
)
def test_regenerate_empty_chat_gets_error(admin: TestClient, request_text: str) -> None:
    with connect(admin, new_chat(admin)) as socket:
        socket.send_text(request_text)
        assert "no message to answer" in socket.receive_json()["message"]


def test_send_while_answering_gets_error(admin: TestClient, fake_backend: FakeBackend) -> None:
    fake_backend.stall_after = 1
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "token")
        send_prompt(socket, "Again")
        error = receive_until(socket, "error")[-1]
        socket.send_text('{"type": "stop"}')
        receive_until(socket, "done")
    assert "still being generated" in error["message"]
    assert [message.content for message in saved_messages(admin, chat_id)] == ["Hello", "Hello"]


def chat_model(client: TestClient, chat_id: str) -> str | None:
    state = state_of(client)
    user = find_account(state.db, "admin")
    assert user is not None
    return chats.get_chat(state.db, user.id, chat_id).model


def test_unknown_model_rejected_before_saving(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    model_before = chat_model(admin, chat_id)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello", model="no-such-model")
        error = socket.receive_json()
    assert error["type"] == "error"
    assert "model 'no-such-model' not found" in error["message"]
    assert f"pick one of: {FAKE_MODEL}" in error["message"]
    assert saved_messages(admin, chat_id) == []
    assert chat_model(admin, chat_id) == model_before
    assert "no-such-model" not in admin.get(f"/chats/{chat_id}").text


def test_regenerate_unknown_model_keeps_answer(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "done")
        socket.send_text('{"type": "regenerate", "model": "no-such-model"}')
        error = socket.receive_json()
        messages_after_error = [message.content for message in saved_messages(admin, chat_id)]
        socket.send_text('{"type": "regenerate"}')
        regenerated = receive_until(socket, "done", "error")[-1]
    assert error["type"] == "error"
    assert "model 'no-such-model' not found" in error["message"]
    assert messages_after_error == ["Hello", "Hello, world!"]
    assert regenerated["type"] == "done"
    assert chat_model(admin, chat_id) == FAKE_MODEL


def test_model_of_unlisted_backend_is_tried(
    make_client: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    backends = [
        {"name": "fake", "kind": "openai", "base_url": fake_backend.url},
        {"name": "down", "kind": "openai", "base_url": "http://127.0.0.1:9"},
    ]
    client = make_client(gateway_backends=backends)
    sign_up(client, "admin")
    chat_id = new_chat(client)
    with connect(client, chat_id) as socket:
        send_prompt(socket, "Hello", model="only-on-down")
        error = receive_until(socket, "error")[-1]
    assert "has not returned a model list yet" in error["message"]
    assert [message.content for message in saved_messages(client, chat_id)] == ["Hello"]


def test_full_queue_answers_busy_at_once(
    make_client: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    fake_backend.stall_after = 1
    backends = [{"name": "fake", "kind": "openai", "base_url": fake_backend.url, "max_parallel": 1}]
    client = make_client(gateway_backends=backends, gateway_max_queue_per_model=0)
    sign_up(client, "admin")
    first_chat, second_chat = new_chat(client), new_chat(client)
    with connect(client, first_chat) as first, connect(client, second_chat) as second:
        send_prompt(first, "Hello")
        receive_until(first, "token")
        send_prompt(second, "Hello")
        error = receive_until(second, "error")[-1]
        first.send_text('{"type": "stop"}')
        receive_until(first, "done")
    assert "retry_after" in error
    assert error["partial"] is False
    retry_after = error["retry_after"]
    assert error["message"] == (
        f"model '{FAKE_MODEL}' is busy with other requests; "
        f"press Regenerate in {retry_after} s to try again"
    )


def test_waiting_prompt_told_queue_position(
    make_client: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    fake_backend.stall_after = 1
    backends = [{"name": "fake", "kind": "openai", "base_url": fake_backend.url, "max_parallel": 1}]
    client = make_client(gateway_backends=backends, gateway_max_queue_per_model=4)
    sign_up(client, "admin")
    first_chat, second_chat = new_chat(client), new_chat(client)
    with connect(client, first_chat) as first, connect(client, second_chat) as second:
        send_prompt(first, "Hello")
        receive_until(first, "token")
        send_prompt(second, "Hello")
        queued = receive_until(second, "queued")[-1]
        # The first stream already stalls; the second, which starts as soon as the first
        # stops, must not.
        fake_backend.stall_after = None
        first.send_text('{"type": "stop"}')
        receive_until(first, "done")
        assert receive_until(second, "done")[-1]["status"] == "complete"
    assert queued["position"] == 1


def test_max_answer_tokens_sent_as_max_tokens(
    make_client: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    client = make_client(web_max_answer_tokens=7)
    sign_up(client, "admin")
    with connect(client, new_chat(client)) as socket:
        send_prompt(socket, "Hello")
        receive_until(socket, "done")
    assert fake_backend.chat_requests()[-1].body["max_tokens"] == 7


def test_chat_deleted_during_answer_keeps_socket_usable(
    admin: TestClient, fake_backend: FakeBackend
) -> None:
    fake_backend.tokens = [f"word{index} " for index in range(50)]
    fake_backend.token_interval = 0.05
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Talk")
        receive_until(socket, "token")
        admin.post(f"/chats/{chat_id}/delete", data={"csrf_token": csrf_token(admin)})
        socket.send_text('{"type": "stop"}')
        assert receive_until(socket, "done")[-1]["message_id"] is None
        send_prompt(socket, "Hello again")
        error = receive_until(socket, "error")[-1]
    assert error["message"] == f"chat {chat_id!r} not found"


@pytest.mark.parametrize(
    ("prompt", "title"),
    [
        ("\x1b[31mred text\x1b[0m\nmore", "[31mred text[0m"),
        ("\x1b\x07", chats.DEFAULT_TITLE),
        ("  two   words  ", "two words"),
        ("x" * 100, "x" * 59 + "…"),
    ],
)
def test_title_leaves_out_control_characters(prompt: str, title: str) -> None:
    assert shorten_title(prompt) == title


def test_control_characters_prompt_answered(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "\x1b[1mbold\x1b[0m")
        received = receive_until(socket, "done", "error")
    assert {"type": "title", "title": "[1mbold[0m"} in received
    assert received[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("count", "stored"), [(None, None), (0, 0), (2**31 - 1, 2**31 - 1), (2**31, None), (-1, None)]
)
def test_oversized_token_counts_not_stored(count: int | None, stored: int | None) -> None:
    assert storable_count(count) == stored


def test_accepted_names_saved_prompt_and_replaced_answer(admin: TestClient) -> None:
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        sent = receive_until(socket, "done")
        socket.send_text('{"type": "regenerate"}')
        regenerated = receive_until(socket, "done")
    prompt, first_answer = (sent[0], sent[-1])
    assert prompt["type"] == "accepted"
    assert prompt["message_id"] == saved_messages(admin, chat_id)[0].id
    assert regenerated[0] == {"type": "accepted", "removed_message_id": first_answer["message_id"]}


def test_rejected_prompt_error_names_model(admin: TestClient, fake_backend: FakeBackend) -> None:
    fake_backend.chat_status = 400
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "Hello")
        error = receive_until(socket, "error", "done")[-1]
    answer = saved_messages(admin, chat_id)[-1]

    assert error["message"] == (
        f"model '{FAKE_MODEL}' cannot answer this chat: the fake backend failed"
    )
    assert answer.status == MessageStatus.ERROR
    assert answer.error == error["message"]


def test_context_overflow_told_in_chat_terms(admin: TestClient, fake_backend: FakeBackend) -> None:
    fake_backend.chat_status = 400
    fake_backend.chat_error = (
        "the prompt is 6160 tokens even without the oldest 4 messages, which does not fit the "
        "context of 2048 tokens; shorten it or raise options.num_ctx"
    )
    chat_id = new_chat(admin)
    with connect(admin, chat_id) as socket:
        send_prompt(socket, "A very long prompt")
        error = receive_until(socket, "error", "done")[-1]

    assert error["message"] == (
        f"model '{FAKE_MODEL}' cannot answer this chat: your message, with the chat's system "
        "prompt, is 6160 tokens, more than the 2048 tokens that the model reads at once; "
        "shorten it and send it again"
    )


def test_unavailable_backend_message_says_regenerate() -> None:
    sent: list[dict[str, Any]] = []

    async def send(payload: dict[str, Any]) -> None:
        sent.append(payload)

    stream = AnswerStream(cast(Any, None), cast(Any, None), 1, "chat", FAKE_MODEL, send)
    error = NoBackendAvailable(
        f"model '{FAKE_MODEL}' is served by fake, and none of them is healthy now; retry in 5 s",
        5,
    )
    asyncio.run(stream._rejected(error))

    assert sent == [
        {
            "type": "error",
            "message": f"model '{FAKE_MODEL}' is served by fake, and none of them is healthy "
            "now; press Regenerate to try again",
            "partial": False,
            "retry_after": 5,
        }
    ]
