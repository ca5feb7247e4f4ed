"""The two APIs the gateway speaks to backends: Ollama's and OpenAI's chat streaming.

Each protocol builds a backend's request body, reads its model list and
parses its stream one line at a time. The parsers sit on the per-token path,
so they do one json.loads per line and nothing else that allocates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from llmcloud.gateway.config import BackendKind
from llmcloud.gateway.request import ChatRequest

_raw_decode = json.JSONDecoder().raw_decode

# Ollama options that OpenAI's chat completions API also has, under the same name.
_OPENAI_OPTIONS = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


class UpstreamError(Exception):
    """A backend's stream carried an error, or a line that cannot be parsed."""


@dataclass(slots=True)
class StreamResult:
    """The end of a backend's answer: why it ended, token counts and backend timings in ns."""

    done_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    load_ns: int | None = None
    prompt_eval_ns: int | None = None
    eval_ns: int | None = None


class StreamParser(Protocol):
    result: StreamResult | None
    """Set once the line that ends the answer has been parsed."""

    def feed(self, line: str) -> str | None:
        """Parse one line; return the token text it carries, or None."""

    def finish(self) -> StreamResult | None:
        """Return the result at the end of the stream, or None when the answer was cut short."""


class ChatProtocol(Protocol):
    chat_path: str
    models_path: str

    def chat_body(self, request: ChatRequest, keep_alive: str | int | float) -> dict[str, Any]: ...

    def model_names(self, listing: Any) -> list[str]: ...

    def parser(self) -> StreamParser: ...


class OllamaProtocol:
    """POST /api/chat streaming NDJSON; GET /api/tags lists the models."""

    chat_path = "/api/chat"
    models_path = "/api/tags"

    def chat_body(self, request: ChatRequest, keep_alive: str | int | float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "keep_alive": keep_alive,
        }
        if request.options:
            body["options"] = request.options
        return body

    def model_names(self, listing: Any) -> list[str]:
        models = listing.get("models") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            raise UpstreamError("the model list has no 'models' array")
        return [
            str(item.get("name") or item.get("model")) for item in models if isinstance(item, dict)
        ]

    def parser(self) -> StreamParser:
        return OllamaStreamParser()


class OllamaStreamParser:
    def __init__(self) -> None:
        self.result: StreamResult | None = None

    def feed(self, line: str) -> str | None:
        if not line:
            return None
        data = _json_object(line)
        if "error" in data:
            raise UpstreamError(str(data["error"]))

        message = data.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if data.get("done"):
            self.result = _ollama_result(data)
        return text if isinstance(text, str) and text else None

    def finish(self) -> StreamResult | None:
        return self.result


def _ollama_result(data: dict[str, Any]) -> StreamResult:
    result = StreamResult(str(data.get("done_reason") or "stop"))
    result.prompt_tokens = _int_or_none(data.get("prompt_eval_count"))
    result.completion_tokens = _int_or_none(data.get("eval_count"))
    result.load_ns = _int_or_none(data.get("load_duration"))
    result.prompt_eval_ns = _int_or_none(data.get("prompt_eval_duration"))
    result.eval_ns = _int_or_none(data.get("eval_duration"))
    return result


class OpenAIProtocol:
    """POST /v1/chat/completions streaming server-sent events; GET /v1/models lists the models."""

    chat_path = "/v1/chat/completions"
    models_path = "/v1/models"

    def chat_body(self, request: ChatRequest, keep_alive: str | int | float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in _OPENAI_OPTIONS:
            if name in request.options:
                body[name] = request.options[name]
        num_predict = request.options.get("num_predict")
        if num_predict is not None and num_predict > 0:
            body["max_tokens"] = num_predict
        return body

    def model_names(self, listing: Any) -> list[str]:
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            raise UpstreamError("the model list has no 'data' array")
        return [str(item["id"]) for item in models if isinstance(item, dict) and "id" in item]

    def parser(self) -> StreamParser:
        return OpenAIStreamParser()


class OpenAIStreamParser:
    """Reads `data: {chunk}` events until `data: [DONE]`; other SSE lines are ignored."""

    def __init__(self) -> None:
        self.result: StreamResult | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, line: str) -> str | None:
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.result = self._result()
            return None

        data = _json_object(payload)
        if "error" in data:
            raise UpstreamError(error_message(data))
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return None

        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        return text if isinstance(text, str) and text else None

    def finish(self) -> StreamResult | None:
        # Some servers close the stream after the last chunk without sending [DONE].
        if self.result is None and self.finish_reason is not None:
            self.result = self._result()
        return self.result

    def _result(self) -> StreamResult:
        result = StreamResult(self.finish_reason or "stop")
        if self.usage is not None:
            result.prompt_tokens = _int_or_none(self.usage.get("prompt_tokens"))
            result.completion_tokens = _int_or_none(self.usage.get("completion_tokens"))
        return result


def protocol_for(kind: BackendKind) -> ChatProtocol:
    return OllamaProtocol() if kind == "ollama" else OpenAIProtocol()


def error_message(body: Any) -> str:
    """Return the message of an Ollama (`{"error": "..."}`) or OpenAI error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error is not None:
        return str(error)
    return str(body)[:300]


def _json_object(line: str) -> dict[str, Any]:
    # raw_decode() skips json.loads' Python wrapper and its two regex matches per call.
    text = line.strip()
    try:
        data, end = _raw_decode(text)
    except json.JSONDecodeError as exc:
        raise UpstreamError(f"invalid JSON in the stream ({exc.msg}): {text[:100]!r}") from None
    if end != len(text):
        raise UpstreamError(f"invalid JSON in the stream (extra data): {text[:100]!r}")
    if not isinstance(data, dict):
        raise UpstreamError(f"expected a JSON object in the stream, got {text[:100]!r}")
    return data


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
