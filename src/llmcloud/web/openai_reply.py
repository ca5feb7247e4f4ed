"""Responses of the /v1 API: one chat completion, streamed or whole, and OpenAI's error bodies.

`CompletionResponse` reads the gateway's events while it sends the response. Until the
first token arrives, nothing is sent, so that a chat the gateway rejects or
that fails on every backend gets a plain HTTP error with its status (404,
503 with Retry-After, 502). With `"stream": true` the answer then goes out
as server-sent events, one `data:` event per token, each sent as soon as
the gateway hands it over. The stream ends with a chunk that carries
`finish_reason`, a usage chunk when `stream_options.include_usage` is set,
and `data: [DONE]`. A backend failure after the first token arrives as one
`data: {"error": {...}}` event before `[DONE]`, as the engine's /v1 sends it.
When the client disconnects, the gateway's stream is closed, which stops
the backend.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llmcloud.gateway import (
    ChatEvent,
    Done,
    Failed,
    GatewayError,
    Queued,
    ServiceUnavailable,
    Started,
    Token,
)
from llmcloud.tls.asgi import BODY_SEND
from llmcloud.web.rejections import REJECTED_STATUSES, context_overflow, rejection_detail

log = logging.getLogger("llmcloud.web")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses, which would hold tokens back, unless this header is set.
    (b"x-accel-buffering", b"no"),
]
DONE_EVENT = b"data: [DONE]\n\n"
# Completion ids are unique, not secret: a random prefix per process and a counter, which
# spares each request a call for random bytes.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count()
# json.dumps() with any argument builds a new encoder on every call; this one is built once.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode
# The end of a streamed chunk after its delta (see CompletionResponse._chunk_head), and the
# end of a token's chunk after the token's JSON string.
_CHUNK_END = b',"logprobs":null,"finish_reason":null}]}\n\n'
_TOKEN_END = b"}" + _CHUNK_END
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(status, message, param=param, code=code)
    return JSONResponse(body, status, headers=headers)


def failure_response(failed: Failed) -> JSONResponse:
    """Return a backend's refusal of a chat in the backend's own words."""
    overflow = context_overflow(failed.message)
    if overflow is not None:
        message = (
            f"the prompt is {overflow.size} tokens, which does not fit the model's context of "
            f"{overflow.context} tokens even without the oldest messages; shorten the messages "
            "or use a model with a longer context"
        )
        return error_response(400, message, param="messages", code="context_length_exceeded")
    if failed.status_code in REJECTED_STATUSES:
        return error_response(failed.status_code, rejection_detail(failed.message))
    return error_response(failed.status_code, failed.message)


def gateway_error_response(exc: GatewayError) -> JSONResponse:
    """Return a gateway error with its status, and Retry-After when the client should retry."""
    headers = None
    if isinstance(exc, ServiceUnavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    code = "model_not_found" if exc.status_code == 404 else None
    return error_response(exc.status_code, exc.message, code=code, headers=headers)


class CompletionResponse:
    """One chat completion from the gateway's events, as SSE or as one JSON object."""

    def __init__(
        self,
        events: AsyncGenerator[ChatEvent, None],
        model: str,
        *,
        stream: bool,
        include_usage: bool,
    ) -> None:
        self.events = events
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.id = f"chatcmpl-{_ID_PREFIX}{next(_ids):08x}"
        self.created = int(time.time())
        # A streamed chunk is this head, its delta and _CHUNK_END: the fields of _chunk() in
        # its order, written out rather than built as a dict and encoded per chunk.
        self._chunk_head = (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{_encode_json(model)},"system_fingerprint":null,'
            '"choices":[{"index":0,"delta":'
        ).encode()
        self._token_head = self._chunk_head + b'{"content":'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A task that watches for the client's disconnect cancels this one. An anyio task
        # group did this before, and its set-up and cancellation, once per request, were a
        # large share of a request's CPU time in cProfile.
        task = asyncio.current_task()
        assert task is not None
        left = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, task, left))
        try:
            await self._respond_and_close(scope, receive, send)
        except asyncio.CancelledError:
            if not left.is_set() or task.uncancel() > 0:
                raise
            # Only the watcher cancelled the response, because the client left.
        finally:
            watcher.cancel()

    async def _respond_and_close(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with aclosing(self.events):
            await self._respond(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = await self._first_event()
        except GatewayError as exc:
            log.info("chat completion on model %s rejected: %s", self.model, exc.message)
            await gateway_error_response(exc)(scope, receive, send)
            return
        if isinstance(first, Failed):
            await failure_response(first)(scope, receive, send)
        elif self.stream:
            await self._send_stream(send, scope.get(BODY_SEND, send), first)
        else:
            await self._send_whole(scope, receive, send, first)

    async def _first_event(self) -> Token | Done | Failed:
        """Wait through the queue for the first token, or the chat's end.

        Started comes just before the first token or the end, which the
        response waits for anyway. Skipping it sends the stream's head right
        before the first token, with no step through the events between them.
        """
        async for event in self.events:
            if not isinstance(event, Queued | Started):
                return event
        return Failed("the gateway ended the chat without an answer", partial=False)

    async def _send_stream(self, send: Send, body_send: Send, first: Token | Done) -> None:
        """Send the SSE stream: its start through `send`, its body through `body_send`.

        `body_send` is the server's `send` when the app provides it under BODY_SEND,
        which spares each token the calls through the layers that do nothing with body
        messages.
        """
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        send = body_send
        # The role chunk goes out together with the first token, in one write.
        opening = self._chunk_head + b'{"role":"assistant","content":""}' + _CHUNK_END
        final: Done | Failed | None = first if isinstance(first, Done) else None
        if isinstance(first, Token):
            await send(_body(opening + self._token_event(first.text)))
            opening = b""

        # The per-token path: one event built from its template and one send.
        head, tail = self._token_head, _TOKEN_END
        if final is None:
            async for event in self.events:
                if type(event) is Token:
                    data = opening + head + _encode_json(event.text).encode() + tail
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    opening = b""
                elif isinstance(event, Done | Failed):
                    final = event
                    break

        ending = [opening]
        if isinstance(final, Done):
            ending.append(self._event(self._chunk({}, finish_reason(final))))
            if self.include_usage:
                ending.append(self._event(self._completion_object([], usage(final))))
        else:
            ending.append(self._event(error_body(502, _failure_message(final))))
        ending.append(DONE_EVENT)
        await send(_body(b"".join(ending), more=False))

    async def _send_whole(
        self, scope: Scope, receive: Receive, send: Send, first: Token | Done
    ) -> None:
        parts: list[str] = []
        final: Done | Failed | None = None
        async with aclosing(_chain(first, self.events)) as events:
            async for event in events:
                if isinstance(event, Token):
                    parts.append(event.text)
                elif isinstance(event, Done | Failed):
                    final = event
                    break

        response: JSONResponse
        if isinstance(final, Done):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts)},
                "finish_reason": finish_reason(final),
                "logprobs": None,
            }
            response = JSONResponse(self._completion_object([choice], usage(final)))
        else:
            status = final.status_code if final else 502
            response = error_response(status, _failure_message(final))
        await response(scope, receive, send)

    def _token_event(self, text: str) -> bytes:
        return self._token_head + _encode_json(text).encode() + _TOKEN_END

    def _chunk(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return self._completion_object([choice], None, chunk=True)

    def _completion_object(
        self, choices: list[dict[str, Any]], counts: dict[str, int] | None, *, chunk: bool = False
    ) -> dict[str, Any]:
        streamed = chunk or self.stream
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if streamed else "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if counts is not None or not streamed:
            body["usage"] = counts
        return body

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return b"data: " + _encode_json(data).encode() + b"\n\n"


def finish_reason(done: Done) -> str:
    return "length" if done.done_reason == "length" else "stop"


def usage(done: Done) -> dict[str, int] | None:
    """Return OpenAI's usage counts, or None when the backend reported no token counts."""
    if done.prompt_tokens is None or done.completion_tokens is None:
        return None
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _failure_message(failed: Failed | None) -> str:
    if failed is None:
        return "the gateway ended the chat before the answer was complete"
    return failed.message


async def _chain(
    first: ChatEvent, rest: AsyncGenerator[ChatEvent, None]
) -> AsyncGenerator[ChatEvent, None]:
    yield first
    async for event in rest:
        yield event


def _body(data: bytes, *, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _cancel_on_disconnect(
    receive: Receive, responding: asyncio.Task[Any], left: asyncio.Event
) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()
    responding.cancel()
