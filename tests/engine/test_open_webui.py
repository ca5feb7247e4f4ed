"""Open WebUI's requests to an Ollama server, replayed against the engine with the real model.

Open WebUI (open-webui/open-webui, package.json version 0.8.2 at commit fa2d6c1d) cannot
be installed here: it pulls several GB, torch included. These tests send the requests
that its backend sends, with the same bodies and headers, and check every response field
that it reads, with the type it expects. The requests come from these files:

- backend/open_webui/routers/ollama.py (commit 598282cf): the model list from /api/tags
  and /api/ps, /api/version, /api/show, /api/chat, /api/generate (also the model unload,
  an empty prompt with keep_alive 0), /api/embed, /api/embeddings, /api/pull, /api/copy,
  DELETE /api/delete, /api/create after POST /api/blobs, and /v1/chat/completions and
  /v1/completions passed through.
- backend/open_webui/utils/payload.py (commit 227ce3f6): how a chat in OpenAI's shape
  becomes an /api/chat body, and how model parameters become `options` (each cast with
  int, float or bool) or root fields (`format`, `keep_alive`, `think`).
- backend/open_webui/utils/response.py (commit b899de37): `model`, `message.content` and
  `done` of each /api/chat line. Later copies of the file also read `message.thinking` and
  `message.tool_calls`, and build a usage block from the token counts and durations of
  the last line, so the tests check those too.
- backend/open_webui/retrieval/utils.py: /api/embed for documents, with `truncate: true`
  and `Authorization: Bearer ` even when no key is set.

Open WebUI reads JSON responses with aiohttp's `json()`, which fails unless the Content-Type
is application/json, and it reads a failed request's message from the `error` field, so
the tests check both.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import BUNDLED_MODEL
from tests.engine.gguf_builder import tiny_gguf

if TYPE_CHECKING:
    from tests.engine.registry_fixture import RegistryServer

pytest_plugins = ["tests.engine.registry_fixture"]

# Open WebUI sends these with every request when ENABLE_FORWARD_USER_INFO_HEADERS is on.
USER_HEADERS = {
    "Content-Type": "application/json",
    "X-OpenWebUI-User-Name": quote("Ada Lovelace", safe=" "),
    "X-OpenWebUI-User-Id": "0f3c2a9e-6d1b-4c8e-9a57-2b1d8e4f7c60",
    "X-OpenWebUI-User-Email": "ada@example.com",
    "X-OpenWebUI-User-Role": "admin",
    "X-OpenWebUI-Chat-Id": "5b0e7d42-0c7a-4b1e-8f0a-3c9d2e1f4a68",
}

# A model's advanced parameters as Open WebUI's apply_model_params_to_body_ollama sends
# them in `options`, each cast to the type of its mapping table.
MODEL_PARAMS_OPTIONS: dict[str, Any] = {
    "temperature": 0.0,
    "top_p": 0.9,
    "seed": 7,
    "mirostat": 0,
    "mirostat_eta": 0.1,
    "mirostat_tau": 5.0,
    "num_ctx": 1024,
    "num_batch": 512,
    "num_keep": 24,
    "num_predict": 6,
    "repeat_last_n": 64,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "penalize_newline": True,
    "stop": ["\n\n"],
    "numa": False,
    "num_gpu": 0,
    "main_gpu": 0,
    "low_vram": False,
    "vocab_only": False,
    "use_mmap": True,
    "use_mlock": False,
    "num_thread": 2,
}

QUICK = {"temperature": 0.0, "num_predict": 6, "seed": 1}

FINAL_COUNTS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture
def client(engine_url: str) -> httpx.Client:
    return httpx.Client(base_url=engine_url, headers=USER_HEADERS, timeout=120)


def chat_body(**fields: Any) -> dict[str, Any]:
    """A chat as convert_payload_openai_to_ollama writes it for /api/chat."""
    body: dict[str, Any] = {
        "model": BUNDLED_MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello."},
        ],
        "stream": True,
        "options": dict(QUICK),
    }
    body.update(fields)
    return body


def assert_json_response(response: httpx.Response) -> Any:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    """Decode a streamed answer line by line, as Open WebUI's stream converter does."""
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def open_webui_usage(final: dict[str, Any]) -> dict[str, Any]:
    """Compute the usage block that Open WebUI builds from the last line of a chat."""
    eval_duration = final.get("eval_duration", 0)
    prompt_eval_duration = final.get("prompt_eval_duration", 0)
    seconds = (final.get("total_duration", 0) or 0) // 1_000_000_000
    return {
        "response_token/s": round(final["eval_count"] / (eval_duration / 10_000_000) * 100, 2)
        if eval_duration > 0
        else "N/A",
        "prompt_token/s": round(
            final["prompt_eval_count"] / (prompt_eval_duration / 10_000_000) * 100, 2
        )
        if prompt_eval_duration > 0
        else "N/A",
        "total_tokens": int(final["prompt_eval_count"] + final["eval_count"]),
        "approximate_total": f"{seconds // 3600}h{(seconds % 3600) // 60}m{seconds % 60}s",
    }


def assert_final_chat_line(final: dict[str, Any]) -> None:
    assert final["done"] is True
    assert final["done_reason"] in ("stop", "length")
    assert isinstance(final["model"], str)
    assert isinstance(final["created_at"], str)
    for field in FINAL_COUNTS:
        assert isinstance(final[field], int), field
        assert final[field] >= 0, field
    assert final["eval_count"] > 0
    usage = open_webui_usage(final)
    assert usage["total_tokens"] == final["prompt_eval_count"] + final["eval_count"]


def version_tuple(version: str) -> tuple[int, ...]:
    """Parse a version the way Open WebUI picks the lowest of several Ollama servers."""
    return tuple(map(int, re.sub(r"^v|-.*", "", version).split(".")))


def test_version_parses_as_numbers(client: httpx.Client) -> None:
    body = assert_json_response(client.get("/api/version"))
    assert isinstance(body["version"], str)
    assert len(version_tuple(body["version"])) == 3


def test_tags_list_model_fields(client: httpx.Client) -> None:
    response = client.get("/api/tags")
    assert response.status_code == 200
    models = assert_json_response(response)["models"]
    by_model = {model["model"]: model for model in models}
    assert BUNDLED_MODEL in by_model
    for model in models:
        assert isinstance(model["name"], str)
        assert isinstance(model["model"], str)
        assert isinstance(model["size"], int)
        assert re.fullmatch(r"[0-9a-f]{64}", model["digest"])
        assert isinstance(datetime.fromisoformat(model["modified_at"]), datetime)
        details = model["details"]
        for field in ("format", "family", "parameter_size", "quantization_level"):
            assert isinstance(details[field], str), field
        assert isinstance(details["families"], list)
    bundled = by_model[BUNDLED_MODEL]
    assert bundled["name"] == BUNDLED_MODEL
    assert bundled["details"]["format"] == "gguf"


def test_ps_expires_at_parses(client: httpx.Client) -> None:
    load = client.post("/api/generate", json={"model": BUNDLED_MODEL, "keep_alive": "5m"})
    assert load.status_code == 200

    body = assert_json_response(client.get("/api/ps"))

    loaded = {model["model"]: model for model in body["models"]}
    assert BUNDLED_MODEL in loaded
    model = loaded[BUNDLED_MODEL]
    assert model["name"] == BUNDLED_MODEL
    expires = datetime.fromisoformat(model["expires_at"])
    assert expires.tzinfo is not None
    assert expires > datetime.now(UTC)
    assert isinstance(model["size"], int)
    assert isinstance(model["size_vram"], int)
    assert isinstance(model["details"]["parameter_size"], str)


def test_show_returns_model_info(client: httpx.Client) -> None:
    # ModelNameForm copies `name` into `model`, so both arrive.
    response = client.post("/api/show", json={"name": BUNDLED_MODEL, "model": BUNDLED_MODEL})
    body = assert_json_response(response)
    assert response.status_code == 200
    for field in ("modelfile", "parameters", "template"):
        assert isinstance(body[field], str), field
    assert isinstance(body["details"], dict)
    assert isinstance(body["model_info"], dict)
    assert isinstance(body["capabilities"], list)
    assert "completion" in body["capabilities"]


def test_chat_streams_ndjson_lines(client: httpx.Client) -> None:
    response = client.post("/api/chat", json=chat_body(keep_alive="5m"))
    assert response.status_code == 200

    lines = ndjson_lines(response)

    assert len(lines) >= 2
    for line in lines[:-1]:
        assert line["done"] is False
        assert line["model"] == BUNDLED_MODEL
        assert line["message"]["role"] == "assistant"
        assert isinstance(line["message"]["content"], str)
        assert "tool_calls" not in line["message"]
    assert_final_chat_line(lines[-1])
    assert "".join(line["message"]["content"] for line in lines).strip()


def test_chat_without_stream_is_one_object(client: httpx.Client) -> None:
    # Title, tag and follow-up tasks send the chat with stream false.
    body = chat_body(stream=False, metadata=None)
    del body["metadata"]
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200
    answer = assert_json_response(response)
    assert answer["message"]["role"] == "assistant"
    assert isinstance(answer["message"]["content"], str)
    assert answer["message"]["content"].strip()
    assert answer["message"].get("thinking") is None
    assert_final_chat_line(answer)


def test_chat_accepts_model_params(client: httpx.Client) -> None:
    body = chat_body(stream=False, options=dict(MODEL_PARAMS_OPTIONS), keep_alive=300, think=False)
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    answer = assert_json_response(response)
    assert answer["done"] is True
    assert answer["eval_count"] <= MODEL_PARAMS_OPTIONS["num_predict"]


@pytest.mark.parametrize("keep_alive", ["5m", -1, "-1", 300, "1h30m"])
def test_chat_accepts_keep_alive_forms(client: httpx.Client, keep_alive: object) -> None:
    body = chat_body(stream=False, keep_alive=keep_alive)
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True


def test_chat_json_format(client: httpx.Client) -> None:
    body = chat_body(stream=False, format="json", options={**QUICK, "num_predict": 8})
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"].lstrip().startswith("{")


def test_chat_json_schema_format(client: httpx.Client) -> None:
    # response_format {"type": "json_schema", "json_schema": {"schema": ...}} becomes `format`.
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    body = chat_body(stream=False, format=schema, options={**QUICK, "num_predict": 12})
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    content = response.json()["message"]["content"]
    assert content.lstrip().startswith("{")


def test_chat_tool_round_trip(client: httpx.Client) -> None:
    # convert_messages_openai_to_ollama turns tool calls into Ollama's shape with empty
    # content, and keeps tool_call_id on the tool's answer.
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
            "content": "",
        },
        {"role": "tool", "content": "18 degrees and sunny", "tool_call_id": "call_1"},
    ]
    response = client.post("/api/chat", json=chat_body(messages=messages, tools=tools))
    assert response.status_code == 200, response.text
    assert_final_chat_line(ndjson_lines(response)[-1])


def test_chat_tool_call_without_content(client: httpx.Client) -> None:
    # Open WebUI's /ollama/api/chat drops a None content when it forwards a message.
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18 degrees and sunny"},
    ]
    response = client.post("/api/chat", json=chat_body(messages=messages, stream=False))
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True


def test_chat_message_without_content_or_tool_calls(client: httpx.Client) -> None:
    messages = [{"role": "assistant"}, {"role": "user", "content": "hi"}]
    response = client.post("/api/chat", json=chat_body(messages=messages))
    assert response.status_code == 400
    assert "messages.0.content" in assert_json_response(response)["error"]


def test_chat_image_error_is_readable(client: httpx.Client) -> None:
    # An image attached in the chat arrives base64-encoded in `images`; the bundled model
    # is text-only, and Open WebUI shows the `error` field to the user.
    messages = [{"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}]
    response = client.post("/api/chat", json=chat_body(messages=messages))
    assert response.status_code == 400
    error = assert_json_response(response)["error"]
    assert "images" in error
    assert BUNDLED_MODEL in error


def test_chat_unknown_model_error_is_readable(client: httpx.Client) -> None:
    response = client.post("/api/chat", json=chat_body(model="missing:latest"))
    assert response.status_code == 404
    assert "missing" in assert_json_response(response)["error"]


def test_generate_streams_and_not(client: httpx.Client) -> None:
    # GenerateCompletionForm sends its fields with None values left out.
    body = {"model": BUNDLED_MODEL, "prompt": "Once upon a time", "options": QUICK}
    streamed = ndjson_lines(client.post("/api/generate", json={**body, "stream": True}))
    assert all(isinstance(line["response"], str) for line in streamed)
    assert streamed[-1]["done"] is True
    assert isinstance(streamed[-1]["context"], list)

    response = client.post("/api/generate", json={**body, "stream": False})
    answer = assert_json_response(response)
    assert isinstance(answer["response"], str)
    assert answer["done"] is True
    assert isinstance(answer["eval_count"], int)


def test_unload_through_generate(client: httpx.Client) -> None:
    # /ollama/api/unload posts this body without `stream` and reads the response with json().
    load = client.post("/api/generate", json={"model": BUNDLED_MODEL, "prompt": ""})
    assert load.status_code == 200

    response = client.post(
        "/api/generate", json={"model": BUNDLED_MODEL, "keep_alive": 0, "prompt": ""}
    )

    answer = assert_json_response(response)
    assert response.status_code == 200
    assert answer["done"] is True
    assert answer["done_reason"] == "unload"
    loaded = [model["model"] for model in client.get("/api/ps").json()["models"]]
    assert BUNDLED_MODEL not in loaded


def test_embed_for_documents(engine_url: str) -> None:
    # generate_ollama_batch_embeddings sends "Bearer " with an empty key when none is set.
    # httpx does not send a header value that ends in a space, so http.client sends it, as
    # the requests library that Open WebUI uses does.
    body = {"input": ["first chunk", "second chunk"], "model": BUNDLED_MODEL, "truncate": True}
    connection = http.client.HTTPConnection(urlsplit(engine_url).netloc, timeout=120)
    try:
        connection.request(
            "POST",
            "/api/embed",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": "Bearer "},
        )
        response = connection.getresponse()
        status, content_type, data = (
            response.status,
            response.getheader("Content-Type"),
            response.read(),
        )
    finally:
        connection.close()

    assert status == 200, data
    assert content_type is not None
    assert content_type.startswith("application/json")
    embeddings = json.loads(data)["embeddings"]
    assert len(embeddings) == 2
    assert all(isinstance(value, float) for value in embeddings[0])
    assert len(embeddings[0]) == len(embeddings[1])


def test_embed_single_string(client: httpx.Client) -> None:
    body = {"model": BUNDLED_MODEL, "input": "one query", "keep_alive": "5m", "options": {}}
    embeddings = assert_json_response(client.post("/api/embed", json=body))["embeddings"]
    assert len(embeddings) == 1


def test_legacy_embeddings(client: httpx.Client) -> None:
    response = client.post("/api/embeddings", json={"model": BUNDLED_MODEL, "prompt": "hello"})
    embedding = assert_json_response(response)["embedding"]
    assert embedding
    assert all(isinstance(value, float) for value in embedding)


def test_pull_copy_delete(client: httpx.Client, registry_server: RegistryServer) -> None:
    registry_server.add_bundled_model("webui:1")
    name = f"{registry_server.host}/library/webui:1"

    # The admin page sends `name`; ModelNameForm adds `model`, and the router adds insecure.
    pull = client.post("/api/pull", json={"name": name, "model": name, "insecure": True})
    assert pull.status_code == 200
    progress = ndjson_lines(pull)
    assert all("error" not in line for line in progress)
    assert all(isinstance(line["status"], str) for line in progress)
    assert any(
        isinstance(line.get("total"), int) and line.get("completed") == line["total"]
        for line in progress
    )
    assert any(isinstance(line.get("digest"), str) for line in progress)
    assert progress[-1]["status"] == "success"

    copy = client.post("/api/copy", json={"source": name, "destination": "webui-copy:1"})
    assert copy.status_code == 200

    for model in (name, "webui-copy:1"):
        body = json.dumps({"name": model, "model": model}).encode()
        delete = client.request("DELETE", "/api/delete", content=body)
        assert delete.status_code == 200, delete.text
    remaining = [model["model"] for model in client.get("/api/tags").json()["models"]]
    assert name not in remaining
    assert "webui-copy:1" not in remaining


def test_upload_blob_then_create(client: httpx.Client, engine_url: str) -> None:
    # /ollama/models/upload posts the file's bytes without a Content-Type, then creates a
    # model named after the file from the blob's digest, and checks only the status codes.
    data = tiny_gguf()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload = httpx.post(f"{engine_url}/api/blobs/{digest}", content=data)
    assert upload.is_success

    create = client.post(
        "/api/create", json={"model": "webui-upload", "files": {"webui-upload.gguf": digest}}
    )
    assert create.is_success, create.text
    assert "webui-upload:latest" in [m["model"] for m in client.get("/api/tags").json()["models"]]

    delete = client.request("DELETE", "/api/delete", json={"model": "webui-upload"})
    assert delete.status_code == 200


def test_openai_chat_passthrough(client: httpx.Client) -> None:
    # /ollama/v1/chat/completions forwards the OpenAI body and streams the response as received.
    body = {
        "model": BUNDLED_MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 6,
        "temperature": 0,
    }
    answer = assert_json_response(client.post("/v1/chat/completions", json=body))
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] > 0

    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"


def test_openai_completion_passthrough(client: httpx.Client) -> None:
    body = {"model": BUNDLED_MODEL, "prompt": "Once upon a time", "max_tokens": 6}
    answer = assert_json_response(client.post("/v1/completions", json=body))
    assert isinstance(answer["choices"][0]["text"], str)


def test_openai_models_for_openai_connection(client: httpx.Client) -> None:
    # An OpenAI connection at <engine>/v1 lists models from `data[].id`.
    body = assert_json_response(client.get("/v1/models"))
    assert BUNDLED_MODEL in [model["id"] for model in body["data"]]
