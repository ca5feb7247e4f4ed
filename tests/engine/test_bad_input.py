"""Every kind of bad request gets a 4xx naming the problem, and the next request still works.

Input that OpenAI's API accepts, such as null for an optional field, is accepted too.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import BUNDLED_MODEL

M = BUNDLED_MODEL
USER = [{"role": "user", "content": "hi"}]

# (case id, path, JSON body or raw bytes, expected status, text the error must contain)
CASES: list[tuple[str, str, Any, int, str]] = [
    ("messages_as_string", "/api/chat", {"model": M, "messages": "hi"}, 400, "messages"),
    (
        "content_as_object",
        "/api/chat",
        {"model": M, "messages": [{"role": "user", "content": {"text": "hi"}}]},
        400,
        "messages.0.content",
    ),
    (
        "message_without_content",
        "/api/chat",
        {"model": M, "messages": [{"role": "user"}]},
        400,
        "messages.0.content",
    ),
    (
        "unknown_role",
        "/api/chat",
        {"model": M, "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "messages.0.role",
    ),
    ("invalid_utf8", "/api/chat", b'{"model": "\xff\xfe", "messages": []}', 400, "UTF-8"),
    ("empty_body", "/api/chat", b"", 400, "empty"),
    ("invalid_json", "/api/generate", b'{"model": ', 400, "not valid JSON"),
    ("nested_too_deeply", "/api/chat", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("huge_number", "/v1/chat/completions", b'{"n": ' + b"9" * 5000 + b"}", 400, "4300 digits"),
    ("body_not_object", "/api/generate", [1, 2], 400, "JSON object"),
    ("unknown_model", "/api/chat", {"model": "llama9:70b", "messages": USER}, 404, "llama9"),
    ("name_with_dotdot", "/api/chat", {"model": "a/../b", "messages": USER}, 400, "a/../b"),
    (
        "name_with_backslash",
        "/api/generate",
        {"model": "a\\b", "prompt": "x"},
        400,
        "invalid model name",
    ),
    (
        "name_with_control_character",
        "/api/generate",
        {"model": "smollm2\u0001:135m", "prompt": "x"},
        400,
        "control characters",
    ),
    (
        "name_absolute_path",
        "/api/generate",
        {"model": "/etc/passwd", "prompt": "x"},
        400,
        "invalid model name",
    ),
    (
        "negative_num_ctx",
        "/api/generate",
        {"model": M, "prompt": "x", "options": {"num_ctx": -1}},
        400,
        "options.num_ctx",
    ),
    (
        "absurd_num_ctx",
        "/api/generate",
        {"model": M, "prompt": "x", "options": {"num_ctx": 10**9}},
        400,
        "num_ctx",
    ),
    (
        "temperature_as_word",
        "/api/generate",
        {"model": M, "prompt": "x", "options": {"temperature": "hot"}},
        400,
        "options.temperature",
    ),
    (
        "negative_top_p",
        "/api/generate",
        {"model": M, "prompt": "x", "options": {"top_p": -0.5}},
        400,
        "options.top_p",
    ),
    (
        "prompt_longer_than_context",
        "/api/generate",
        {"model": M, "prompt": "word " * 3000, "options": {"num_ctx": 512}},
        400,
        "context",
    ),
    (
        "truncate_as_string",
        "/api/chat",
        {"model": M, "messages": USER, "truncate": "yes"},
        400,
        "truncate",
    ),
    (
        "bad_keep_alive",
        "/api/generate",
        {"model": M, "prompt": "x", "keep_alive": "forever"},
        400,
        "keep_alive",
    ),
    (
        "stream_as_string",
        "/api/generate",
        {"model": M, "prompt": "x", "stream": "yes"},
        400,
        "stream",
    ),
    (
        "context_outside_vocabulary",
        "/api/generate",
        {"model": M, "prompt": "x", "context": [10**8]},
        400,
        "context",
    ),
    (
        "images_unsupported",
        "/api/generate",
        {"model": M, "prompt": "x", "images": ["aGVsbG8="]},
        400,
        "images",
    ),
    ("embed_input_object", "/api/embed", {"model": M, "input": {"a": 1}}, 400, "input"),
    (
        "openai_empty_messages",
        "/v1/chat/completions",
        {"model": M, "messages": []},
        400,
        "messages",
    ),
    (
        "openai_many_choices",
        "/v1/chat/completions",
        {"model": M, "messages": USER, "n": 3},
        400,
        "n",
    ),
    (
        "openai_unknown_model",
        "/v1/chat/completions",
        {"model": "gpt-9", "messages": USER},
        404,
        "gpt-9",
    ),
    (
        "openai_stream_as_string",
        "/v1/chat/completions",
        {"model": M, "messages": USER, "stream": "yes"},
        400,
        "stream: Input should be a valid boolean",
    ),
    (
        "openai_text_part_null",
        "/v1/chat/completions",
        {"model": M, "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
        400,
        "messages.0.content.0.text: Input should be a valid string, not null",
    ),
    (
        "openai_text_part_number",
        "/v1/chat/completions",
        {"model": M, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        400,
        "messages.0.content.0.text: Input should be a valid string",
    ),
    (
        "openai_text_part_without_text",
        "/v1/chat/completions",
        {"model": M, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        400,
        "messages.0.content.0.text: Field required",
    ),
    (
        "openai_image_part",
        "/v1/chat/completions",
        {
            "model": M,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "messages.0.content.0.type: part type 'image_url' is not supported in user messages; "
        "send parts of type 'text'",
    ),
    (
        "openai_refusal_part_in_user_message",
        "/v1/chat/completions",
        {
            "model": M,
            "messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "No"}]}],
        },
        400,
        "part type 'refusal' is not supported in user messages",
    ),
    (
        "openai_refusal_part_null",
        "/v1/chat/completions",
        {
            "model": M,
            "messages": [
                *USER,
                {"role": "assistant", "content": [{"type": "refusal", "refusal": None}]},
            ],
        },
        400,
        "messages.1.content.0.refusal: Input should be a valid string, not null",
    ),
    ("unknown_route", "/api/nothing", {"model": M}, 404, "/api/nothing"),
    (
        "tool_without_name_ollama",
        "/api/chat",
        {"model": M, "messages": [{"role": "user", "content": "hi"}], "tools": [{"function": {}}]},
        400,
        "tool 0 has no function name",
    ),
    (
        "tool_name_not_text_openai",
        "/v1/chat/completions",
        {
            "model": M,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": 5}}],
        },
        400,
        "tool 0 has no function name",
    ),
]


def _send(url: str, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(
            url + path, content=body, headers={"content-type": "application/json"}, timeout=30
        )
    return httpx.post(url + path, json=body, timeout=30)


def _message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def _next_request_succeeds(url: str) -> None:
    response = httpx.post(
        url + "/api/generate",
        json={"model": M, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["done"] is True


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_rejected(
    engine_url: str, path: str, body: Any, status: int, expected: str
) -> None:
    response = _send(engine_url, path, body)
    assert response.status_code == status
    assert expected in _message(response)
    _next_request_succeeds(engine_url)


def test_openai_error_has_openai_shape(engine_url: str) -> None:
    response = _send(engine_url, "/v1/chat/completions", {"model": M, "messages": "hi"})
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"


def test_openai_part_error_names_part(engine_url: str) -> None:
    content = [{"type": "text", "text": "Hi"}, {"type": "input_audio", "input_audio": {}}]
    body = {"model": M, "messages": [{"role": "user", "content": content}]}

    error = _send(engine_url, "/v1/chat/completions", body).json()["error"]

    assert error["param"] == "messages.0.content.1.type"
    assert "'input_audio'" in error["message"]


# The optional fields of OpenAI's chat completions request, each sent as null. The engine
# ignores tool_choice and top_logprobs.
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
    "n",
    "user",
    "response_format",
    "tools",
    "logprobs",
    "tool_choice",
    "top_logprobs",
]


def test_openai_null_fields_mean_absent(engine_url: str) -> None:
    # max_completion_tokens keeps the output short, so it is the one field not sent as null.
    body = {"model": M, "messages": USER, "max_completion_tokens": 2}
    body.update(dict.fromkeys(NULLABLE_FIELDS))

    response = _send(engine_url, "/v1/chat/completions", body)

    assert response.status_code == 200
    # "stream": null is no stream, and "n": null one choice.
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.json()["choices"]) == 1


def test_openai_null_max_tokens_is_default(engine_url: str) -> None:
    body = {
        "model": M,
        "prompt": "Once upon a time",
        "max_tokens": None,
        "echo": None,
        "stream": None,
        "stream_options": {"include_usage": None},
        "temperature": 0,
    }

    response = _send(engine_url, "/v1/completions", body)

    assert response.status_code == 200
    # OpenAI's default for /v1/completions is 16 tokens.
    assert response.json()["usage"]["completion_tokens"] <= 16
    assert response.json()["choices"][0]["text"]


def _prompt_tokens(url: str, assistant_content: Any) -> int:
    messages = [
        {"role": "user", "content": "Help me."},
        {"role": "assistant", "content": assistant_content},
        {"role": "user", "content": "Why not?"},
    ]
    body = {"model": M, "messages": messages, "max_tokens": 1}
    response = _send(url, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    tokens: int = response.json()["usage"]["prompt_tokens"]
    return tokens


def test_openai_refusal_part_is_assistant_text(engine_url: str) -> None:
    refusal = "I can't help with that."
    as_part = _prompt_tokens(engine_url, [{"type": "refusal", "refusal": refusal}])
    as_string = _prompt_tokens(engine_url, refusal)
    empty = _prompt_tokens(engine_url, "")
    assert as_part == as_string
    assert as_part > empty


def test_oversized_body_gets_413(engine_url: str) -> None:
    body = b'{"model": "x", "prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    response = _send(engine_url, "/api/generate", body)
    assert response.status_code == 413
    assert "limit" in _message(response)
    _next_request_succeeds(engine_url)


def test_oversized_chunked_body_gets_413(engine_url: str) -> None:
    def chunks() -> Any:
        for _ in range(10):
            yield b"a" * (1024 * 1024)

    response = httpx.post(engine_url + "/api/generate", content=chunks(), timeout=30)
    assert response.status_code == 413
    _next_request_succeeds(engine_url)


def test_invalid_schema_format_is_rejected(engine_url: str) -> None:
    response = _send(
        engine_url,
        "/api/generate",
        {"model": M, "prompt": "x", "format": {"type": "object", "properties": 5}},
    )
    assert response.status_code == 400
    assert "format" in _message(response)
    _next_request_succeeds(engine_url)


def test_wrong_method_gets_405_naming_allowed(engine_url: str) -> None:
    response = httpx.put(engine_url + "/v1/models", timeout=30)

    assert response.status_code == 405
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "use GET" in error["message"]
