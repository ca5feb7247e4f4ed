"""HTTP plumbing shared by the engine's routes: body parsing, errors, NDJSON and SSE.

Request bodies are parsed here rather than by FastAPI, so that every kind of
bad body (empty, over the size limit, invalid UTF-8, invalid JSON, wrong
types) gets the same kind of answer: a 4xx whose message names the problem.
Ollama's routes answer `{"error": "..."}`; OpenAI's routes answer
`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from llmcloud.engine.errors import EngineError, InvalidRequest, PayloadTooLarge, ServerBusy
from llmcloud.text import number_too_long

BodyModel = TypeVar("BodyModel", bound=BaseModel)

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


async def read_json(request: Request, model: type[BodyModel]) -> BodyModel:
    """Read, decode and validate a JSON request body, raising InvalidRequest or PayloadTooLarge."""
    limit: int = request.app.state.settings.engine_max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the limit of {limit} bytes"
        )

    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")

    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is not valid JSON: it is nested too deeply") from None
    except ValueError:
        # Python's limit on the digits of an integer (4,300 by default) raises ValueError.
        raise InvalidRequest(number_too_long("request body")) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(data).__name__}")

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{location}: {error['msg']}")
    return "invalid request: " + "; ".join(problems)


def first_invalid_field(message: str) -> str | None:
    if message.startswith("invalid request: "):
        return message.removeprefix("invalid request: ").split(":", 1)[0]
    return None


def ollama_error(exc: EngineError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, exc.status_code, headers=_error_headers(exc))


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_busy",
}


def openai_error(exc: EngineError) -> JSONResponse:
    body = {
        "error": {
            "message": exc.message,
            "type": OPENAI_ERROR_TYPES.get(exc.status_code, "server_error"),
            "param": first_invalid_field(exc.message),
            "code": "model_not_found" if exc.status_code == 404 else None,
        }
    }
    return JSONResponse(body, exc.status_code, headers=_error_headers(exc))


def _error_headers(exc: EngineError) -> dict[str, str]:
    if isinstance(exc, ServerBusy):
        return {"Retry-After": str(exc.retry_after)}
    if exc.status_code == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}


# One encoder for every line: json.dumps with options builds a new encoder on each call, and
# streaming calls this once per generated token.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def ndjson_line(data: dict[str, Any]) -> bytes:
    return (_COMPACT_JSON.encode(data) + "\n").encode()


def sse_event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def rfc3339_now() -> str:
    """The current time as Ollama writes `created_at`: RFC 3339 in UTC with nanoseconds."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return f"{_utc_seconds(seconds)}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4)
def _utc_seconds(seconds: int) -> str:
    # Streaming stamps every token, and formatting a datetime costs more than the rest of a line.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class DeferredResponse(Response):
    """A response computed while watching the connection; a disconnect cancels the work.

    Used for `"stream": false`, where nothing is sent until the answer is
    complete: the computation runs beside a task that waits for
    `http.disconnect`, and `cleanup` runs in every case.
    """

    def __init__(
        self,
        compute: Callable[[], Awaitable[Response]],
        cleanup: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__()
        self.compute = compute
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response | None = None
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            try:
                response = await self.compute()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.cleanup()
            group.cancel_scope.cancel()
        if response is not None:
            await response(scope, receive, send)
