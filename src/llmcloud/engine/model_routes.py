"""Ollama's model-management routes: tags, show, pull, create, copy, delete and blobs."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmcloud.engine.errors import EngineError, InvalidRequest
from llmcloud.engine.gguf import read_gguf_info
from llmcloud.engine.http import NDJSON, ndjson_line, read_json
from llmcloud.engine.manifest import check_digest
from llmcloud.engine.model_schemas import (
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    PullRequest,
    ShowRequest,
)
from llmcloud.engine.names import parse_model_name
from llmcloud.engine.pull import pull_model, resolve_source
from llmcloud.engine.store import ModelEntry, ModelStore

logger = logging.getLogger("llmcloud.engine")

router = APIRouter()

# /api/show leaves out arrays longer than this unless `verbose` is set, as Ollama does.
SHOW_MAX_ARRAY_ITEMS = 5
# Keys that Ollama's /api/show leaves out of model_info.
SHOW_HIDDEN_KEYS = frozenset({"general.name", "tokenizer.chat_template"})


def _store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


@router.get("/api/tags")
async def list_models(request: Request) -> JSONResponse:
    entries = await asyncio.to_thread(_store(request).list)
    return JSONResponse({"models": [_tag(entry) for entry in entries]})


@router.post("/api/show")
async def show_model(request: Request) -> JSONResponse:
    body = await read_json(request, ShowRequest)
    entry = await asyncio.to_thread(_store(request).get, body.model_name())
    model_info = entry.model_info
    if body.verbose:
        info = await asyncio.to_thread(read_gguf_info, entry.model_path, max_array_items=None)
        model_info = info.metadata

    response: dict[str, Any] = {
        "modelfile": _modelfile(entry),
        "parameters": _parameters_text(entry.parameters),
        "template": entry.template or _text(entry.model_info.get("tokenizer.chat_template")),
        "details": entry.details.to_json(),
        "model_info": _show_model_info(model_info, verbose=body.verbose),
        "capabilities": ["completion"],
        "modified_at": entry.modified_at.isoformat(),
    }
    if entry.system is not None:
        response["system"] = entry.system
    if entry.license is not None:
        response["license"] = entry.license
    return JSONResponse(response)


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    body = await read_json(request, PullRequest)
    model = body.model_name()
    source, name = (body.from_, model) if body.from_ else (model, None)
    if resolve_source(source, name).kind != "registry" and not body.from_:
        raise InvalidRequest(
            f"{model!r} is a URL or file path, not a model name; "
            "send it in 'from' and the name to save it as in 'model'"
        )

    events = pull_model(
        _store(request),
        source,
        registry=request.app.state.settings.engine_registry,
        name=name,
        insecure=body.insecure,
    )
    return await _progress_response(
        (progress.to_json() async for progress in events), stream=body.stream
    )


@router.post("/api/create")
async def create(request: Request) -> Response:
    body = await read_json(request, CreateRequest)
    body.check_supported()
    statuses: list[str] = []
    await asyncio.to_thread(
        _store(request).create,
        body.model_name(),
        from_=body.from_,
        files=body.files,
        template=body.template,
        system=body.system,
        parameters=body.parameters,
        license=body.license,
        progress=statuses.append,
    )
    events = _iterate([{"status": status} for status in statuses])
    return await _progress_response(events, stream=body.stream)


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    body = await read_json(request, CopyRequest)
    await asyncio.to_thread(_store(request).copy, body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    body = await read_json(request, DeleteRequest)
    store = _store(request)
    name = body.model_name()
    await asyncio.to_thread(store.delete, name)

    # A loaded model keeps running from its open file, so unload it too.
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        await scheduler.unload(parse_model_name(name).display)
    return Response(status_code=200)


@router.head("/api/blobs/{digest}")
async def blob_exists(request: Request, digest: str) -> Response:
    found = await asyncio.to_thread(_store(request).has_blob, check_digest(digest))
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}")
async def upload_blob(request: Request, digest: str) -> Response:
    store = _store(request)
    if await asyncio.to_thread(store.has_blob, check_digest(digest)):
        return Response(status_code=200)
    await store.write_blob(digest, request.stream())
    logger.info("stored uploaded blob %s", digest)
    return Response(status_code=201)


async def _progress_response(events: AsyncIterator[dict[str, Any]], *, stream: bool) -> Response:
    """Return NDJSON progress, or only the last object when `stream` is false.

    The first two objects are read before the response starts, so that an
    error found at once (such as an unknown model) gets its own HTTP status.
    A later error arrives as a last line `{"error": "..."}`.
    """
    generator = _as_generator(events)
    if not stream:
        last: dict[str, Any] = {"status": "success"}
        try:
            async for event in generator:
                last = event
        finally:
            await generator.aclose()
        return JSONResponse(last)

    head = []
    for _ in range(2):
        try:
            head.append(await anext(generator))
        except StopAsyncIteration:
            break
        except BaseException:
            await generator.aclose()
            raise
    return StreamingResponse(_ndjson(head, generator), media_type=NDJSON)


async def _ndjson(
    head: list[dict[str, Any]], rest: AsyncGenerator[dict[str, Any], None]
) -> AsyncIterator[bytes]:
    try:
        for event in head:
            yield ndjson_line(event)
        async for event in rest:
            yield ndjson_line(event)
    except EngineError as exc:
        logger.warning("model operation failed after streaming started: %s", exc.message)
        yield ndjson_line({"error": exc.message})
    except Exception:
        logger.exception("model operation failed after streaming started")
        yield ndjson_line({"error": "internal error; see the engine log for details"})
    finally:
        await rest.aclose()


async def _as_generator(events: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[dict[str, Any]]:
    async for event in events:
        yield event


async def _iterate(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def _tag(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name.display,
        "model": entry.name.display,
        "modified_at": entry.modified_at.isoformat(),
        "size": entry.size,
        "digest": entry.digest,
        "details": entry.details.to_json(),
    }


def _show_model_info(metadata: dict[str, Any], *, verbose: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in SHOW_HIDDEN_KEYS:
            continue
        if not verbose and isinstance(value, list) and len(value) > SHOW_MAX_ARRAY_ITEMS:
            value = []
        shown[key] = _json_safe(value)
    return shown


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities, which JSON cannot carry, by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _parameters_text(parameters: dict[str, Any]) -> str:
    """Format parameters one per line, as /api/show's `parameters` text: `name   value`."""
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {_parameter_value(item)}")
    return "\n".join(lines)


def _parameter_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _modelfile(entry: ModelEntry) -> str:
    lines = [
        f"# Modelfile of {entry.name.display}, generated by llmcloud",
        f"# To build a new model from it, replace the FROM line with: FROM {entry.name.display}",
        "",
        f"FROM {entry.model_path}",
    ]
    if entry.template is not None:
        lines.append(f'TEMPLATE """{entry.template}"""')
    if entry.system is not None:
        lines.append(f'SYSTEM """{entry.system}"""')
    for key, value in entry.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_parameter_value(item)}")
    if entry.license is not None:
        lines.append(f'LICENSE """{entry.license}"""')
    return "\n".join(lines) + "\n"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
