"""Tool calls in the responses of /api/chat and /v1/chat/completions, with the real model.

The bundled model does not write tool calls by itself, so these tests force its output
with a JSON schema (Ollama's `format`, OpenAI's `response_format`). The schema fixes
every value, so the output is a bare JSON call whatever the model would have written.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import BUNDLED_MODEL

TOOLS = [
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
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 64}


def call_schema(name: str = "get_weather") -> dict[str, Any]:
    """A schema whose only valid instance is a call of `name` with the city Paris."""
    arguments = {
        "type": "object",
        "properties": {"city": {"const": "Paris"}},
        "required": ["city"],
    }
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
    }


TWO_CALLS_SCHEMA = {"type": "array", "items": call_schema(), "minItems": 2, "maxItems": 2}


@pytest.fixture
def client(engine_url: str) -> httpx.Client:
    return httpx.Client(base_url=engine_url, timeout=120)


@pytest.fixture
def openai_client(engine_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)


def ollama_chat(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"model": BUNDLED_MODEL, "messages": MESSAGES, "options": OPTIONS, **fields}
    return client.post("/api/chat", json=body)


def test_ollama_chat_returns_tool_calls(client: httpx.Client) -> None:
    response = ollama_chat(client, tools=TOOLS, format=call_schema(), stream=False)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert body["message"]["content"] == ""
    assert body["done_reason"] == "stop"


def test_ollama_chat_streams_tool_calls(client: httpx.Client) -> None:
    response = ollama_chat(client, tools=TOOLS, format=call_schema(), stream=True)
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]

    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert "".join(line["message"]["content"] for line in lines) == ""
    assert lines[-1]["done"] is True
    assert lines[-1]["done_reason"] == "stop"


def test_ollama_chat_several_tool_calls(client: httpx.Client) -> None:
    response = ollama_chat(client, tools=TOOLS, format=TWO_CALLS_SCHEMA, stream=False)
    assert response.status_code == 200, response.text
    calls = response.json()["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "get_weather"]


def test_ollama_chat_unknown_tool_is_content(client: httpx.Client) -> None:
    response = ollama_chat(client, tools=TOOLS, format=call_schema("other"), stream=True)
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]

    assert all("tool_calls" not in line["message"] for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert json.loads(content)["name"] == "other"


def test_ollama_chat_without_tools_is_content(client: httpx.Client) -> None:
    response = ollama_chat(client, format=call_schema(), stream=False)
    assert response.status_code == 200, response.text
    message = response.json()["message"]
    assert "tool_calls" not in message
    assert json.loads(message["content"])["name"] == "get_weather"


def test_ollama_client_parses_tool_calls(engine_url: str) -> None:
    response = ollama.Client(host=engine_url).chat(
        model=BUNDLED_MODEL, messages=MESSAGES, tools=TOOLS, format=call_schema(), options=OPTIONS
    )
    assert response.message.tool_calls is not None
    call = response.message.tool_calls[0].function
    assert call.name == "get_weather"
    assert call.arguments == {"city": "Paris"}


def openai_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "call", "schema": schema}}


def test_openai_chat_returns_tool_calls(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        response_format=openai_format(call_schema()),
        temperature=0,
        seed=1,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_openai_chat_streams_tool_calls(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        response_format=openai_format(TWO_CALLS_SCHEMA),
        temperature=0,
        seed=1,
        max_tokens=64,
        stream=True,
    )
    chunks = [chunk for chunk in stream if chunk.choices]

    deltas = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert [delta.index for delta in deltas] == [0, 1]
    assert all(delta.id and delta.id.startswith("call_") for delta in deltas)
    assert [delta.function.name for delta in deltas if delta.function] == ["get_weather"] * 2
    arguments = [json.loads(delta.function.arguments or "") for delta in deltas if delta.function]
    assert arguments == [{"city": "Paris"}] * 2
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_chat_without_tools_is_content(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=MESSAGES,
        response_format=openai_format(call_schema()),
        temperature=0,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert json.loads(choice.message.content or "")["name"] == "get_weather"


def test_openai_chat_takes_call_without_content(client: httpx.Client) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        *MESSAGES,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    body = {"model": BUNDLED_MODEL, "messages": messages, "tools": TOOLS, "max_tokens": 8}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_openai_chat_rejects_message_without_content(client: httpx.Client) -> None:
    body = {"model": BUNDLED_MODEL, "messages": [{"role": "user"}], "max_tokens": 8}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.content"
