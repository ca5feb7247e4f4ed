"""The web app's OpenAI-compatible /v1 API, through the official `openai` client and raw HTTP.

The app runs under uvicorn on a loopback port, so that streaming, client
disconnects and timing behave as in production. Its gateway routes to the
fake backend, except in the test marked `model`, which uses the engine with
the bundled model.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from llmcloud.auth import accounts, api_key_cache, api_keys
from llmcloud.db.models import ApiKey, Role, User, utcnow
from llmcloud.gateway import ChatRequest
from llmcloud.gateway.request import build_chat_request
from llmcloud.monitoring.metrics import REGISTRY
from llmcloud.web import create_app, openai_api
from llmcloud.web.deps import WebState
from tests.conftest import BUNDLED_MODEL, RunningServer
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, web_settings

HELLO = [{"role": "user", "content": "Hello"}]


@dataclass
class Web:
    server: RunningServer
    state: WebState
    admin: User

    @property
    def api_url(self) -> str:
        return self.server.url + "/v1"

    def account(self, username: str, role: Role = Role.USER) -> User:
        return accounts.create_account(self.state.db, username, None, role=role)

    def key(self, user: User) -> str:
        return api_keys.create_api_key(self.state.db, user.id, "test").key

    def client(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_url, api_key=key, max_retries=0, **options)

    def post(self, key: str | None, body: Any, timeout: float = 10) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(
            self.api_url + "/chat/completions", json=body, headers=headers, timeout=timeout
        )


def start_web(data_dir: Path, backend_url: str, **overrides: Any) -> Web:
    settings = web_settings(data_dir, backend_url, **overrides)
    app = create_app(settings, hasher=CHEAP_HASHER)
    server = RunningServer(app).start()
    state: WebState = app.state.web
    admin = accounts.create_account(state.db, "admin", None, role=Role.ADMIN)
    return Web(server, state, admin)


@pytest.fixture
def web(tmp_path: Path, fake_backend: FakeBackend) -> Iterator[Web]:
    web = start_web(tmp_path / "data", fake_backend.url)
    yield web
    web.server.stop()


@pytest.fixture
def key(web: Web) -> str:
    return web.key(web.account("alice"))


def test_models_lists_backend_models(web: Web, key: str) -> None:
    models = web.client(key).models.list()
    assert [model.id for model in models.data] == [FAKE_MODEL]


def test_model_retrieve_unknown_is_404(web: Web, key: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        web.client(key).models.retrieve("no-such-model")
    assert "no-such-model" in raised.value.message


def test_chat_completion_returns_answer_and_usage(web: Web, key: str) -> None:
    completion = web.client(key).chat.completions.create(model=FAKE_MODEL, messages=HELLO)
    choice = completion.choices[0]
    assert choice.message.content == "Hello, world!"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 7
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 11


def test_chat_completion_stream_relays_tokens(web: Web, key: str) -> None:
    stream = web.client(key).chat.completions.create(
        model=FAKE_MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
    pieces = [text for text in texts if text]
    # Tokens that reach the gateway in one read are relayed as one chunk.
    assert pieces[0] == "Hello"
    assert "".join(pieces) == "Hello, world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_stream_ends_with_done_event(web: Web, key: str) -> None:
    response = web.post(key, {"model": FAKE_MODEL, "messages": HELLO, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")


def test_stream_has_security_headers(web: Web, key: str) -> None:
    response = web.post(key, {"model": FAKE_MODEL, "messages": HELLO, "stream": True})
    # /v1 skips the middleware stack; its own layer adds the headers to the response's start.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert '"content":"Hello' in response.text
    assert response.text.endswith("data: [DONE]\n\n")


def test_unexpected_error_is_a_logged_500(
    web: Web, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: dict[str, Any]) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(openai_api, "parse_chat_request", broken)
    with caplog.at_level("ERROR", logger="llmcloud.web"):
        response = web.post(key, {"model": FAKE_MODEL, "messages": HELLO})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "request id" in error["message"]
    assert "a bug" not in response.text
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1
    assert "POST /v1/chat/completions failed" in logged[0].getMessage()
    assert response.headers["x-content-type-options"] == "nosniff"


def test_sampling_options_reach_backend(web: Web, key: str, fake_backend: FakeBackend) -> None:
    web.client(key).chat.completions.create(
        model=FAKE_MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, *HELLO],
        temperature=0.5,
        max_tokens=12,
        stop=["\n"],
    )
    sent = fake_backend.chat_requests()[-1].body
    assert sent["temperature"] == 0.5
    assert sent["max_tokens"] == 12
    assert sent["stop"] == ["\n"]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}


def test_tokens_are_not_buffered(web: Web, key: str, fake_backend: FakeBackend) -> None:
    fake_backend.token_interval = 0.3
    body = {"model": FAKE_MODEL, "messages": HELLO, "stream": True}
    arrivals = []
    with httpx.stream(
        "POST",
        web.api_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 0.6


def test_client_disconnect_stops_backend(web: Web, key: str, fake_backend: FakeBackend) -> None:
    fake_backend.token_interval = 0.2
    fake_backend.tokens = ["word "] * 100
    stream = web.client(key).chat.completions.create(model=FAKE_MODEL, messages=HELLO, stream=True)
    for _ in zip(range(3), stream, strict=False):
        pass
    stream.close()
    assert fake_backend.client_left.wait(5)
    assert fake_backend.tokens_sent < 50


def test_revoked_key_gets_401(web: Web) -> None:
    alice = web.account("alice")
    created = api_keys.create_api_key(web.state.db, alice.id, "laptop")
    client = web.client(created.key)
    assert client.models.list().data
    api_keys.revoke_api_key(web.state.db, alice.id, created.record.id)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model=FAKE_MODEL, messages=HELLO)
    assert raised.value.status_code == 401
    assert "revoked" in raised.value.message


def test_key_revoked_elsewhere_stops_working_once_renewed(web: Web) -> None:
    alice = web.account("alice")
    created = api_keys.create_api_key(web.state.db, alice.id, "laptop")
    client = web.client(created.key)
    assert client.models.list().data
    # Another process revokes the key: the database changes, this process's cache does not.
    with web.state.db.transaction() as session:
        session.execute(
            sa.update(ApiKey).where(ApiKey.id == created.record.id).values(revoked_at=utcnow())
        )
    for cache in api_key_cache._caches.values():
        for entry in cache.values():
            entry.renew_after = 0.0

    assert client.models.list().data, "an entry within its TTL still serves the request"
    deadline = time.monotonic() + 5
    while openai_api._key_checks and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert "revoked" in raised.value.message


def test_unknown_key_gets_401(web: Web) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        web.client("llmc_" + "x" * 43).models.list()
    assert raised.value.code == "invalid_api_key"


def test_missing_key_gets_401_with_error_shape(web: Web) -> None:
    response = web.post(None, {"model": FAKE_MODEL, "messages": HELLO})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    assert "Authorization: Bearer" in error["message"]


def test_session_cookie_is_not_an_api_key(web: Web) -> None:
    response = httpx.get(web.api_url + "/models", cookies={"llmcloud_session": "anything"})
    assert response.status_code == 401


def test_pending_account_key_gets_403(web: Web) -> None:
    bob = web.account("bob")
    key = web.key(bob)
    accounts.set_role(web.state.db, bob.id, Role.PENDING)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        web.client(key).chat.completions.create(model=FAKE_MODEL, messages=HELLO)
    assert raised.value.code == "account_pending"


def test_deactivated_account_key_gets_403_until_reactivated(web: Web) -> None:
    bob = web.account("bob")
    client = web.client(web.key(bob))
    accounts.deactivate(web.state.db, bob.id)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.models.list()
    assert raised.value.code == "account_deactivated"
    accounts.reactivate(web.state.db, bob.id)
    assert client.models.list().data


def test_unknown_model_gets_404(web: Web, key: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        web.client(key).chat.completions.create(model="llama9", messages=HELLO, stream=True)
    assert raised.value.code == "model_not_found"
    assert FAKE_MODEL in raised.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": FAKE_MODEL, "messages": []}, "messages"),
        ({"model": FAKE_MODEL}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": FAKE_MODEL, "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": FAKE_MODEL, "messages": HELLO, "temperature": "1"}, "temperature"),
        ({"model": FAKE_MODEL, "messages": HELLO, "top_p": True}, "top_p"),
        ({"model": "", "messages": HELLO}, "model"),
        ({"model": "x" * 300, "messages": HELLO}, "model"),
        ({"model": "smollm2\u0000", "messages": HELLO}, "model"),
        ({"model": FAKE_MODEL, "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": FAKE_MODEL, "messages": HELLO, "max_tokens": 10**20}, "max_tokens"),
        (
            {"model": FAKE_MODEL, "messages": HELLO, "max_completion_tokens": 10**20},
            "max_completion_tokens",
        ),
        ({"model": FAKE_MODEL, "messages": HELLO, "n": 2}, "n"),
        ({"model": FAKE_MODEL, "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": FAKE_MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        # A field of several types is named once, without the type names.
        ({"model": FAKE_MODEL, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"model": FAKE_MODEL, "messages": [{"role": "user", "content": []}]},
            "messages.0.content",
        ),
        ({"model": FAKE_MODEL, "messages": HELLO, "stop": 5}, "stop"),
        ({"model": FAKE_MODEL, "messages": HELLO, "tools": [{"type": "function"}]}, "tools"),
        (
            {"model": FAKE_MODEL, "messages": HELLO, "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_invalid_body_gets_400_naming_field(
    web: Web, key: str, body: dict[str, Any], param: str
) -> None:
    response = web.post(key, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


# The optional fields of OpenAI's chat completions request that this API reads or rejects,
# and two that it ignores. Each takes null as absent.
NULLABLE_FIELDS = [
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "user",
    "response_format",
    "tools",
    "logprobs",
    "tool_choice",
    "top_logprobs",
]


def test_null_field_means_absent(web: Web, key: str) -> None:
    rejected = []
    for field in NULLABLE_FIELDS:
        response = web.post(key, {"model": FAKE_MODEL, "messages": HELLO, field: None})
        if response.status_code != 200:
            rejected.append((field, response.json()["error"]["message"]))
    assert rejected == []


def test_null_fields_take_defaults(web: Web, key: str, fake_backend: FakeBackend) -> None:
    body = {"model": FAKE_MODEL, "messages": HELLO, **dict.fromkeys(NULLABLE_FIELDS)}

    response = web.post(key, body)

    assert response.status_code == 200
    # "stream": null is no stream, and "n": null one choice.
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.json()["choices"]) == 1
    sent = fake_backend.chat_requests()[-1].body
    for option in ("temperature", "top_p", "seed", "stop", "max_tokens"):
        assert option not in sent, option


def test_null_include_usage_means_no_usage(web: Web, key: str) -> None:
    body = {
        "model": FAKE_MODEL,
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": None},
    }

    response = web.post(key, body)

    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    assert '"usage":{' not in response.text.replace(" ", "")


def test_openai_client_sends_null_fields(web: Web, key: str) -> None:
    completion = web.client(key).chat.completions.create(
        model=FAKE_MODEL,
        messages=HELLO,
        n=None,
        stream=None,
        stream_options=None,
        temperature=None,
        top_p=None,
        seed=None,
        stop=None,
        max_tokens=None,
        max_completion_tokens=None,
        logprobs=None,
        extra_body={"user": None, "response_format": None, "tools": None},
    )
    assert completion.choices[0].message.content == "Hello, world!"


@pytest.mark.parametrize(
    ("body", "param", "expected"),
    [
        (
            {"model": FAKE_MODEL, "messages": HELLO, "n": 2},
            "n",
            "n: Input should be less than or equal to 1, not 2",
        ),
        (
            {"model": FAKE_MODEL, "messages": HELLO, "stream": "yes"},
            "stream",
            'stream: Input should be a valid boolean, not "yes"',
        ),
        (
            {"model": FAKE_MODEL, "messages": HELLO, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "stream_options.include_usage: Input should be a valid boolean, not 1",
        ),
        (
            {"model": FAKE_MODEL, "messages": HELLO, "temperature": "x" * 100},
            "temperature",
            "not a string of 102 characters",
        ),
        (
            {
                "model": FAKE_MODEL,
                "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}],
            },
            "messages.0.content.0.text",
            "messages.0.content.0.text must be a string, not null",
        ),
        (
            {
                "model": FAKE_MODEL,
                "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            },
            "messages.0.content.0.text",
            "messages.0.content.0.text: Input should be a valid string, not 5",
        ),
        (
            {"model": FAKE_MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
            "messages.0.content.0.text is missing",
        ),
        (
            {
                "model": FAKE_MODEL,
                "messages": [{"role": "assistant", "content": [{"type": "refusal"}]}],
            },
            "messages.0.content.0.refusal",
            "messages.0.content.0.refusal is missing",
        ),
        (
            {
                "model": FAKE_MODEL,
                "messages": [
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": None}]}
                ],
            },
            "messages.0.content.0.refusal",
            "messages.0.content.0.refusal must be a string, not null",
        ),
        (
            {
                "model": FAKE_MODEL,
                "messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "No"}]}],
            },
            "messages.0.content.0",
            "has type 'refusal', which this API does not support in user messages; "
            "send parts of type 'text'",
        ),
        (
            {
                "model": FAKE_MODEL,
                "messages": [{"role": "assistant", "content": [{"type": "image_url"}]}],
            },
            "messages.0.content.0",
            "has type 'image_url', which this API does not support in assistant messages; "
            "send parts of type 'text' or 'refusal'",
        ),
        (
            {"model": FAKE_MODEL, "messages": [{"role": "user", "content": [5]}]},
            "messages.0.content.0",
            "messages.0.content.0: Input should be a valid dictionary",
        ),
    ],
)
def test_invalid_value_gets_400_naming_it(
    web: Web, key: str, body: dict[str, Any], param: str, expected: str
) -> None:
    response = web.post(key, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert expected in error["message"]


def test_assistant_refusal_part_reaches_backend(
    web: Web, key: str, fake_backend: FakeBackend
) -> None:
    refusal = {"type": "refusal", "refusal": "I can't help with that."}
    messages = [
        *HELLO,
        {"role": "assistant", "content": [refusal]},
        {"role": "user", "content": "Why not?"},
    ]

    response = web.post(key, {"model": FAKE_MODEL, "messages": messages})

    assert response.status_code == 200
    sent = fake_backend.chat_requests()[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": "I can't help with that."}


def test_openai_client_sends_refusal_part(web: Web, key: str, fake_backend: FakeBackend) -> None:
    completion = web.client(key).chat.completions.create(
        model=FAKE_MODEL,
        messages=[
            {"role": "user", "content": "Help me."},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Part of it: "},
                    {"type": "refusal", "refusal": "the rest I can't do."},
                ],
            },
            {"role": "user", "content": "Why not?"},
        ],
    )
    assert completion.choices[0].message.content == "Hello, world!"
    sent = fake_backend.chat_requests()[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": "Part of it: the rest I can't do."}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "a number of more than 4300 digits"),
        (b'{"model": "m", "messages": [], "\\ud800": 1}', "the name of \\ud800"),
    ],
)
def test_malformed_body_gets_400(web: Web, key: str, content: bytes, expected: str) -> None:
    response = httpx.post(
        web.api_url + "/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert expected in response.json()["error"]["message"]


def test_body_over_limit_gets_413(web: Web, key: str) -> None:
    huge = "x" * (9 * 1024 * 1024)
    response = web.post(key, {"model": FAKE_MODEL, "messages": [{"role": "user", "content": huge}]})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_prompt_over_web_limit_gets_400(tmp_path: Path, fake_backend: FakeBackend) -> None:
    web = start_web(tmp_path / "data", fake_backend.url, web_max_prompt_length=10)
    try:
        key = web.key(web.account("alice"))
        long_prompt = [{"role": "user", "content": "x" * 11}]
        response = web.post(key, {"model": FAKE_MODEL, "messages": long_prompt})
    finally:
        web.server.stop()
    assert response.status_code == 400
    assert "web_max_prompt_length" in response.json()["error"]["message"]
    assert fake_backend.chat_requests() == []


def test_unknown_path_gets_404_error_shape(web: Web, key: str) -> None:
    response = httpx.post(web.api_url + "/embeddings", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 404
    assert "/v1/chat/completions" in response.json()["error"]["message"]


def test_wrong_method_gets_405(web: Web, key: str) -> None:
    response = httpx.get(web.api_url + "/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_other_methods_get_405(web: Web, method: str) -> None:
    response = httpx.request(method, web.api_url + "/models")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE"])
def test_model_path_other_methods_get_405(web: Web, method: str) -> None:
    response = httpx.request(method, web.api_url + "/models/some-model")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize("path", ["", "/", "/chat/completions/", "/models/"])
def test_paths_near_endpoints_get_404_error_shape(web: Web, key: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(web.api_url + path, json={}, headers=headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


def test_image_part_gets_400_naming_part(web: Web, key: str) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "What is this?"}, image]
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}]}

    response = web.post(key, body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.content.1"
    assert "has type 'image_url'" in response.json()["error"]["message"]
    assert "send parts of type 'text'" in response.json()["error"]["message"]


def test_user_message_without_content_gets_400(web: Web, key: str) -> None:
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": None}]}

    response = web.post(key, body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.content"


def test_unknown_path_message_lists_every_endpoint(web: Web) -> None:
    message = httpx.get(web.api_url + "/embeddings").json()["error"]["message"]
    assert "GET /v1/models/{model}" in message


def test_api_requests_counted_under_route_template(web: Web, key: str) -> None:
    labels = {"app": "web", "route": "/v1/models/{model:path}", "method": "GET", "status": "404"}
    before = REGISTRY.get_sample_value("llmcloud_http_requests_total", labels) or 0.0
    headers = {"Authorization": f"Bearer {key}"}
    httpx.get(web.api_url + "/models/no-such-model", headers=headers)
    # The request is counted once the response has been sent, so it may follow the reply.
    deadline = time.monotonic() + 5
    after = REGISTRY.get_sample_value("llmcloud_http_requests_total", labels)
    while after != before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
        after = REGISTRY.get_sample_value("llmcloud_http_requests_total", labels)
    assert after == before + 1


def test_api_requests_are_logged(web: Web, key: str, caplog: pytest.LogCaptureFixture) -> None:
    def logged() -> bool:
        return any('"GET /v1/models" 200' in record.getMessage() for record in caplog.records)

    with caplog.at_level("INFO", logger="llmcloud.access"):
        httpx.get(web.api_url + "/models", headers={"Authorization": f"Bearer {key}"})
        # The line is written once the response has been sent, so it may follow the reply.
        deadline = time.monotonic() + 5
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)

    assert logged()


def test_backend_error_before_first_token_gets_502(
    web: Web, key: str, fake_backend: FakeBackend
) -> None:
    fake_backend.chat_status = 500
    response = web.post(key, {"model": FAKE_MODEL, "messages": HELLO, "stream": True})
    assert response.status_code == 502
    assert "fake" in response.json()["error"]["message"]


def test_backend_dying_midstream_sends_error_event(
    web: Web, key: str, fake_backend: FakeBackend
) -> None:
    fake_backend.die_after = 2
    stream = web.client(key).chat.completions.create(model=FAKE_MODEL, messages=HELLO, stream=True)
    texts: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as raised:
        read_all()
    assert "".join(texts) == "Hello,"
    assert "failed during the answer" in raised.value.message


@pytest.mark.parametrize(
    ("body", "expected", "param"),
    [
        (b"null", "must be a JSON object, not null", None),
        (b"[1]", "must be a JSON object, not array", None),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply", None),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages.0.content has a lone surrogate (U+D800) at character 0",
            "messages.0.content",
        ),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], '
            b'"stop": ["\\uDC00"], "stream": true}',
            "stop.0 has a lone surrogate",
            "stop.0",
        ),
    ],
)
def test_unusable_json_gets_400(
    web: Web, key: str, body: bytes, expected: str, param: str | None
) -> None:
    response = httpx.post(
        web.api_url + "/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert expected in error["message"]
    assert error["param"] == param


def test_empty_bearer_token_is_missing_key(web: Web) -> None:
    response = httpx.get(web.api_url + "/models", headers={"Authorization": "Bearer"})
    assert response.status_code == 401
    assert "missing API key" in response.json()["error"]["message"]


def test_client_leaving_during_the_body_is_no_error(
    web: Web, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    def logged() -> bool:
        return any('"POST /v1/chat/completions" 0' in r.getMessage() for r in caplog.records)

    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    with caplog.at_level("INFO"):
        with socket.create_connection(("127.0.0.1", web.server.port)) as sock:
            sock.sendall(head.encode() + b'{"model": ')
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)
    # Status 0 in the access log: the client left before any response.
    assert logged()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_backend_dying_before_first_token_gets_502(
    web: Web, key: str, fake_backend: FakeBackend
) -> None:
    # The backend sends status 200 and closes the connection before its first token.
    fake_backend.die_after = 0
    for stream in (True, False):
        body = {"model": FAKE_MODEL, "messages": HELLO, "stream": stream}
        response = web.post(key, body)
        assert response.status_code == 502
        assert "no backend could answer" in response.json()["error"]["message"]


def test_full_queue_gets_503_with_retry_after(tmp_path: Path, fake_backend: FakeBackend) -> None:
    backends = [{"name": "fake", "kind": "openai", "base_url": fake_backend.url, "max_parallel": 1}]
    web = start_web(
        tmp_path / "data",
        fake_backend.url,
        gateway_backends=backends,
        gateway_max_queue_per_model=0,
    )
    fake_backend.stall_before_first_token = True
    key = web.key(web.account("alice"))
    body = {"model": FAKE_MODEL, "messages": HELLO, "stream": True}
    first = threading.Thread(target=_post_quietly, args=(web, key, body))
    try:
        first.start()
        deadline = time.monotonic() + 5
        while fake_backend.streams_open == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        response = web.post(key, body)
    finally:
        web.server.stop()
        first.join()
    assert response.status_code == 503
    assert response.headers["retry-after"]


def _post_quietly(web: Web, key: str, body: Any) -> None:
    """Send a request that the test abandons: it times out after a second."""
    with contextlib.suppress(httpx.TimeoutException):
        web.post(key, body, timeout=1)


@pytest.mark.model
def test_openai_client_chats_with_real_model(tmp_path: Path, engine_url: str) -> None:
    backends = [{"name": "engine", "kind": "ollama", "base_url": engine_url}]
    web = start_web(tmp_path / "data", engine_url, gateway_backends=backends)
    try:
        client = web.client(web.key(web.account("alice")))
        stream = client.chat.completions.create(
            model=BUNDLED_MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    finally:
        web.server.stop()
    texts = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(texts).strip()
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 8


# The /v1 API hands the gateway built requests that the gateway does not check again, so
# what passes the API's checks must pass the gateway's.
EXTREMES: list[dict[str, Any]] = [
    {"temperature": 0, "top_p": 0, "presence_penalty": -2, "frequency_penalty": -2},
    {"temperature": 2, "top_p": 1, "presence_penalty": 2, "frequency_penalty": 2},
    {"seed": -(2**63), "max_tokens": 1, "stop": "\n"},
    {"seed": 2**63 - 1, "max_completion_tokens": 10_000_000, "stop": ["a", "b", "c", "d"]},
]


@pytest.mark.parametrize("fields", EXTREMES)
def test_accepted_request_passes_gateway_checks(fields: dict[str, Any]) -> None:
    roles = ["system", "developer", "user", "assistant", "tool"]
    messages = [{"role": role, "content": f"{role} text"} for role in roles]
    body = openai_api.parse_chat_request({"model": "m:latest", "messages": messages, **fields})
    sent = ChatRequest(
        body.model, openai_api.gateway_messages(body, 1000), openai_api.gateway_options(body)
    )
    checked = build_chat_request(body.model, sent.messages, sent.options, None)
    assert checked == sent


def test_context_overflow_gets_api_advice(web: Web, key: str, fake_backend: FakeBackend) -> None:
    fake_backend.chat_status = 400
    fake_backend.chat_error = (
        "the prompt is 6160 tokens, which does not fit the context of 2048 tokens; "
        "shorten it or raise options.num_ctx"
    )
    response = web.post(key, {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x"}]})
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert "options.num_ctx" not in error["message"]
    assert error["message"].endswith("use a model with a longer context")


def test_backend_rejection_without_status_line(
    web: Web, key: str, fake_backend: FakeBackend
) -> None:
    fake_backend.chat_status = 400
    response = web.post(key, {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x"}]})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the fake backend failed"
