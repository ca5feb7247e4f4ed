"""Ollama's generation routes: /api/generate, /api/chat, /api/embed, /api/embeddings, /api/ps.

Responses stream as NDJSON unless the request says `"stream": false`. The
last object has `done: true`, `done_reason` and durations in nanoseconds. An
error found before the first byte is an HTTP error; an error after that is a
last NDJSON line `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.http import (
    NDJSON,
    DeferredResponse,
    ndjson_line,
    read_json,
    rfc3339_now,
)
from llmcloud.engine.runtime import Chunk, Event, Finished
from llmcloud.engine.scheduler import Scheduler
from llmcloud.engine.schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    Options,
)
from llmcloud.engine.service import (
    Generation,
    PromptRenderer,
    context_length,
    grammar_for,
    merged_options,
    parse_keep_alive,
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

router = APIRouter()

Shape = Callable[[str], dict[str, Any]]


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    body = await read_json(request, OllamaGenerateRequest)
    entry = resolve_model(request.app.state.store, body.model)
    _reject_unsupported(entry, images=body.images, think=body.think, suffix=body.suffix)
    if body.template:
        raise InvalidRequest(
            "custom Go templates in 'template' are not supported; the model's own chat template "
            'is used, or send "raw": true with the complete prompt'
        )
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.prompt and not body.context:
        return await _load_only(request, entry, keep_alive, {"response": ""})

    system = body.system if body.system is not None else entry.system
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": body.prompt}
    ]
    renderer = PromptRenderer(
        messages=None if body.raw else messages,
        raw_prompt=body.prompt if body.raw else None,
        context=body.context,
    )
    generation = await start_generation(
        _scheduler(request),
        entry,
        options=merged_options(entry, body.options),
        keep_alive=keep_alive,
        render=renderer,
        grammar=grammar_for(body.format),
    )
    return _respond(
        generation, entry, body.stream, lambda text: {"response": text}, with_context=True
    )


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    body = await read_json(request, OllamaChatRequest)
    entry = resolve_model(request.app.state.store, body.model)
    images = [image for message in body.messages for image in message.images or []]
    _reject_unsupported(entry, images=images, think=body.think, suffix=None)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.messages:
        return await _load_only(
            request, entry, keep_alive, {"message": {"role": "assistant", "content": ""}}
        )

    messages = [
        template_message(m.role, m.content or "", tool_calls=m.tool_calls, tool_name=m.tool_name)
        for m in body.messages
    ]
    if entry.system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": entry.system})
    generation = await start_generation(
        _scheduler(request),
        entry,
        options=merged_options(entry, body.options),
        keep_alive=keep_alive,
        render=PromptRenderer(
            messages=messages, tools=body.tools, truncate=body.truncate is not False
        ),
        grammar=grammar_for(body.format),
    )
    return _respond(
        generation,
        entry,
        body.stream,
        lambda text: {"message": {"role": "assistant", "content": text}},
        tools=tool_names(body.tools),
    )


@router.post("/api/embed")
async def embed(request: Request) -> JSONResponse:
    body = await read_json(request, OllamaEmbedRequest)
    entry = resolve_model(request.app.state.store, body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    started = time.perf_counter_ns()
    vectors, tokens, load_ns = await embed_texts(
        request, entry, texts, body.options, body.keep_alive, truncate=body.truncate
    )
    if body.dimensions is not None:
        vectors = [_shorten(vector, body.dimensions) for vector in vectors]
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": load_ns,
            "prompt_eval_count": tokens,
        }
    )


@router.post("/api/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    body = await read_json(request, OllamaEmbeddingsRequest)
    entry = resolve_model(request.app.state.store, body.model)
    texts = [body.prompt] if body.prompt else []
    vectors, _, _ = await embed_texts(
        request, entry, texts, body.options, body.keep_alive, truncate=True
    )
    return JSONResponse({"embedding": vectors[0] if vectors else []})


@router.get("/api/ps")
async def running(request: Request) -> JSONResponse:
    models = []
    for model in _scheduler(request).running():
        entry = model.entry
        expires = model.expires_wall_time()
        models.append(
            {
                "name": model.name,
                "model": model.name,
                "size": entry.size,
                "digest": entry.digest,
                "details": _details(entry),
                "expires_at": _iso_time(expires) if expires is not None else "2318-08-29T00:00:00Z",
                "size_vram": 0,
                "context_length": model.num_ctx,
            }
        )
    return JSONResponse({"models": models})


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def _reject_unsupported(
    entry: ModelEntry, *, images: list[str] | None, think: bool | None, suffix: str | None
) -> None:
    name = entry.name.display
    if images:
        raise InvalidRequest(f"model '{name}' does not support images")
    if think:
        raise InvalidRequest(f"model '{name}' does not support thinking")
    if suffix:
        raise InvalidRequest(f"model '{name}' does not support insert (suffix)")


async def _load_only(
    request: Request, entry: ModelEntry, keep_alive: float | None, payload: dict[str, Any]
) -> JSONResponse:
    """Load (or, with keep_alive 0, unload) a model without generating, as Ollama does."""
    scheduler = _scheduler(request)
    if keep_alive == 0:
        await scheduler.unload(entry.name.display)
        reason = "unload"
    else:
        num_ctx = context_length(scheduler.settings, merged_options(entry, None))
        model, _ = await scheduler.acquire(entry, num_ctx=num_ctx, keep_alive=keep_alive)
        await scheduler.release(model)
        reason = "load"
    body = {"model": entry.name.display, "created_at": rfc3339_now(), **payload}
    return JSONResponse({**body, "done": True, "done_reason": reason})


def _respond(
    generation: Generation,
    entry: ModelEntry,
    stream: bool,
    shape: Shape,
    *,
    with_context: bool = False,
    tools: set[str] | None = None,
) -> Response:
    """Send a generation's events; with `tools`, the output is parsed for calls to them."""
    name = entry.name.display
    started = time.perf_counter_ns()
    events: AsyncIterator[Event | ToolCalls] = (
        with_tool_calls(generation, tools) if tools else generation
    )
    if stream:
        return StreamingResponse(
            _stream(generation, events, name, shape, started, with_context),
            media_type=NDJSON,
            background=BackgroundTask(generation.aclose),
        )
    return DeferredResponse(
        lambda: _collect(generation, events, name, shape, started, with_context),
        generation.aclose,
    )


async def _stream(
    generation: Generation,
    events: AsyncIterator[Event | ToolCalls],
    name: str,
    shape: Shape,
    started: int,
    with_context: bool,
) -> AsyncIterator[bytes]:
    lines: list[bytes] = []
    try:
        async for event in events:
            lines.append(_event_line(generation, event, name, shape, started, with_context))
            # The runner hands over several tokens' events at once, and one write sends them all.
            if generation.job.events.empty():
                yield b"".join(lines)
                lines.clear()
        if lines:
            yield b"".join(lines)
    finally:
        await generation.aclose()


def _event_line(
    generation: Generation,
    event: Event | ToolCalls,
    name: str,
    shape: Shape,
    started: int,
    with_context: bool,
) -> bytes:
    if isinstance(event, Chunk):
        return ndjson_line(
            {"model": name, "created_at": rfc3339_now(), **shape(event.text), "done": False}
        )
    if isinstance(event, ToolCalls):
        message = {"role": "assistant", "content": "", "tool_calls": _tool_calls(event.calls)}
        return ndjson_line(
            {"model": name, "created_at": rfc3339_now(), "message": message, "done": False}
        )
    if event.error is not None:
        return ndjson_line({"error": event.error})
    return ndjson_line(_final(generation, event, name, shape(""), started, with_context))


async def _collect(
    generation: Generation,
    events: AsyncIterator[Event | ToolCalls],
    name: str,
    shape: Shape,
    started: int,
    with_context: bool,
) -> Response:
    parts: list[str] = []
    calls: list[ToolCall] = []
    async for event in events:
        if isinstance(event, Chunk):
            parts.append(event.text)
        elif isinstance(event, ToolCalls):
            calls.extend(event.calls)
        elif event.error is not None:
            return JSONResponse({"error": event.error}, status_code=500)
        else:
            payload = shape("".join(parts))
            if calls:
                payload["message"]["tool_calls"] = _tool_calls(calls)
            return JSONResponse(_final(generation, event, name, payload, started, with_context))
    return JSONResponse({"error": "the generation ended without a result"}, status_code=500)


def _final(
    generation: Generation,
    event: Finished,
    name: str,
    payload: dict[str, Any],
    started: int,
    with_context: bool,
) -> dict[str, Any]:
    final: dict[str, Any] = {
        "model": name,
        "created_at": rfc3339_now(),
        **payload,
        "done": True,
        "done_reason": "length" if event.reason == "length" else "stop",
    }
    if with_context:
        final["context"] = generation.job.prompt + event.generated_tokens
    final.update(
        total_duration=time.perf_counter_ns() - started + generation.load_duration_ns,
        load_duration=generation.load_duration_ns,
        prompt_eval_count=event.prompt_tokens,
        prompt_eval_duration=event.prompt_eval_ns,
        eval_count=len(event.generated_tokens),
        eval_duration=event.eval_ns,
    )
    return final


async def embed_texts(
    request: Request,
    entry: ModelEntry,
    texts: list[str],
    options: Options | None,
    keep_alive_value: str | int | float | None,
    *,
    truncate: bool,
) -> tuple[list[list[float]], int, int]:
    """Embed texts with a model; returns the vectors, the input token count and the load time."""
    scheduler = _scheduler(request)
    num_ctx = context_length(scheduler.settings, merged_options(entry, options))
    keep_alive = parse_keep_alive(keep_alive_value)
    model, load_ns = await scheduler.acquire(entry, num_ctx=num_ctx, keep_alive=keep_alive)
    try:
        if not texts:
            return [], 0, load_ns
        embedder = await scheduler.embedder(model)
        vectors, tokens = await asyncio.to_thread(embedder.embed, texts, truncate=truncate)
        return vectors, tokens, load_ns
    finally:
        await scheduler.release(model)


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    if dimensions > len(vector):
        raise InvalidRequest(
            f"dimensions {dimensions} is larger than the model's {len(vector)} dimensions"
        )
    head = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in head)) or 1.0
    return [value / norm for value in head]


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"function": {"name": call.name, "arguments": call.arguments}} for call in calls]


def _details(entry: ModelEntry) -> dict[str, Any]:
    return entry.details.to_json()


def _iso_time(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).isoformat().replace("+00:00", "Z")
