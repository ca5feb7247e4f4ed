"""OpenAI's API under /v1: chat completions, completions, models and embeddings.

Streams are server-sent events that end with `data: [DONE]`; an error after
the stream began arrives as one `data: {"error": {...}}` event before it.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.http import SSE, DeferredResponse, read_json, sse_event
from llmcloud.engine.ollama_api import embed_texts
from llmcloud.engine.runtime import Chunk, Event, Finished
from llmcloud.engine.schemas import (
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingRequest,
    ResponseFormat,
)
from llmcloud.engine.service import (
    Generation,
    PromptRenderer,
    grammar_for,
    merged_options,
    resolve_model,
    start_generation,
)
from llmcloud.engine.store import ModelEntry
from llmcloud.engine.tool_calls import (
    ToolCall,
    ToolCalls,
    template_message,
    tool_names,
    with_tool_calls,
)

router = APIRouter(prefix="/v1")

FINGERPRINT = "fp_llmcloud"

# The advice that ends the error for a prompt that does not fit the context. OpenAI's API
# has no field for the context size, so the advice names none.
CHAT_CONTEXT_HINT = "shorten the messages or use a model with a longer context"
COMPLETION_CONTEXT_HINT = "shorten the prompt or use a model with a longer context"


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await read_json(request, OpenAIChatRequest)
    entry = resolve_model(request.app.state.store, body.model)
    messages = [
        template_message(
            "system" if m.role == "developer" else m.role,
            m.text(),
            tool_calls=m.tool_calls,
            tool_name=m.name if m.role == "tool" else None,
            tool_call_id=m.tool_call_id,
        )
        for m in body.messages
    ]
    if entry.system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": entry.system})
    # As on Ollama's /v1, a chat that does not fit the context always loses its oldest messages.
    generation = await _start(
        request,
        entry,
        body,
        PromptRenderer(messages=messages, tools=body.tools, truncate=True),
        body.max_completion_tokens or body.max_tokens,
        _format_grammar(body.response_format),
        CHAT_CONTEXT_HINT,
    )
    reply = _Reply(generation, entry.name.display, chat=True, include_usage=_usage(body))
    reply.tools = tool_names(body.tools)
    return reply.response(body.stream)


@router.post("/completions")
async def completions(request: Request) -> Response:
    body = await read_json(request, OpenAICompletionRequest)
    entry = resolve_model(request.app.state.store, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise InvalidRequest(f"prompt: expected one prompt, got a list of {len(prompts)}")
    if body.suffix:
        raise InvalidRequest(f"suffix: model '{entry.name.display}' does not support insert")
    generation = await _start(
        request,
        entry,
        body,
        PromptRenderer(raw_prompt=prompts[0]),
        body.max_tokens,
        None,
        COMPLETION_CONTEXT_HINT,
    )
    reply = _Reply(generation, entry.name.display, chat=False, include_usage=_usage(body))
    if body.echo:
        reply.prefix = prompts[0]
    return reply.response(body.stream)


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    entries = request.app.state.store.list()
    return JSONResponse({"object": "list", "data": [_model_object(entry) for entry in entries]})


@router.get("/models/{model:path}")
async def get_model(request: Request, model: str) -> JSONResponse:
    return JSONResponse(_model_object(resolve_model(request.app.state.store, model)))


@router.post("/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    body = await read_json(request, OpenAIEmbeddingRequest)
    entry = resolve_model(request.app.state.store, body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidRequest("input: expected a string or a non-empty list of strings")
    vectors, tokens, _ = await embed_texts(request, entry, texts, None, None, truncate=True)
    if body.dimensions is not None:
        vectors = [vector[: body.dimensions] for vector in vectors]
    data = [
        {"object": "embedding", "index": index, "embedding": _encode(vector, body.encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _start(
    request: Request,
    entry: ModelEntry,
    body: OpenAIChatRequest | OpenAICompletionRequest,
    renderer: PromptRenderer,
    limit: int | None,
    grammar: str | None,
    context_hint: str,
) -> Generation:
    options = merged_options(entry, None)
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "stop"):
        value = getattr(body, name)
        if value is not None:
            options[name] = value
    return await start_generation(
        request.app.state.scheduler,
        entry,
        options=options,
        keep_alive=None,
        render=renderer,
        grammar=grammar,
        max_new_tokens=limit,
        context_hint=context_hint,
    )


def _format_grammar(response_format: ResponseFormat | None) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return grammar_for("json")
    if response_format.json_schema is None:
        raise InvalidRequest("response_format.json_schema: required for type json_schema")
    return grammar_for(response_format.json_schema.schema_ or "json")


def _usage(body: OpenAIChatRequest | OpenAICompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


class _Reply:
    """Shapes one generation as a chat completion or a text completion.

    With `tools`, a chat's output is parsed for calls to them, and a reply with
    calls ends with the finish reason "tool_calls".
    """

    def __init__(self, generation: Generation, model: str, *, chat: bool, include_usage: bool):
        self.generation = generation
        self.model = model
        self.chat = chat
        self.include_usage = include_usage
        self.prefix = ""
        self.tools: set[str] = set()
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def response(self, stream: bool) -> Response:
        if stream:
            return StreamingResponse(
                self._stream(), media_type=SSE, background=BackgroundTask(self.generation.aclose)
            )
        return DeferredResponse(self._collect, self.generation.aclose)

    def _events(self) -> AsyncIterator[Event | ToolCalls]:
        if self.tools:
            return with_tool_calls(self.generation, self.tools)
        return self.generation

    async def _collect(self) -> Response:
        parts = [self.prefix]
        calls: list[ToolCall] = []
        async for event in self._events():
            if isinstance(event, Chunk):
                parts.append(event.text)
            elif isinstance(event, ToolCalls):
                calls.extend(event.calls)
            elif event.error is not None:
                return JSONResponse(_server_error(event.error), status_code=500)
            else:
                return JSONResponse(self._complete("".join(parts), event, calls))
        return JSONResponse(_server_error("the generation ended without a result"), 500)

    async def _stream(self) -> AsyncIterator[bytes]:
        try:
            if self.chat:
                yield sse_event(self._chunk({"role": "assistant", "content": ""}, None))
            if self.prefix:
                yield sse_event(self._chunk({"content": self.prefix}, None))
            calls_sent = 0
            async for event in self._events():
                if isinstance(event, Chunk):
                    yield sse_event(self._chunk({"content": event.text}, None))
                elif isinstance(event, ToolCalls):
                    deltas = [
                        {"index": calls_sent + offset, **call}
                        for offset, call in enumerate(_tool_calls(event.calls))
                    ]
                    calls_sent += len(deltas)
                    yield sse_event(self._chunk({"tool_calls": deltas}, None))
                elif event.error is not None:
                    yield sse_event(_server_error(event.error))
                else:
                    reason = "tool_calls" if calls_sent else _finish_reason(event)
                    yield sse_event(self._chunk({}, reason))
                    if self.include_usage:
                        yield sse_event(self._object([], _usage_counts(event)))
            yield sse_event("[DONE]")
        finally:
            await self.generation.aclose()

    def _complete(self, text: str, event: Finished, calls: list[ToolCall]) -> dict[str, Any]:
        reason = "tool_calls" if calls else _finish_reason(event)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["content"] = text or None
                message["tool_calls"] = _tool_calls(calls)
            choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        return self._object([choice], _usage_counts(event))

    def _chunk(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {
                "index": 0,
                "text": delta.get("content", ""),
                "finish_reason": reason,
                "logprobs": None,
            }
        return self._object([choice], None)

    def _object(
        self, choices: list[dict[str, Any]], usage: dict[str, int] | None
    ) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        streaming_chat = self.chat and (not choices or "delta" in choices[0])
        return {
            "id": self.id,
            "object": kind + ".chunk" if streaming_chat else kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": usage,
        }


def _finish_reason(event: Finished) -> str:
    return "length" if event.reason == "length" else "stop"


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Calls in OpenAI's shape, each with a new id and its arguments as a JSON string."""
    return [
        {
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for call in calls
    ]


def _usage_counts(event: Finished) -> dict[str, int]:
    generated = len(event.generated_tokens)
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": event.prompt_tokens + generated,
    }


def _server_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.name.display,
        "object": "model",
        "created": int(entry.modified_at.timestamp()),
        "owned_by": entry.name.namespace,
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
