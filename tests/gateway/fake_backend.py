"""A fake model server on 127.0.0.1 that speaks OpenAI's and Ollama's streaming chat APIs.

The tests use it in place of vLLM, which needs a GPU, and of servers that misbehave.
Tests set its attributes to make it fail (an HTTP error status), stall before
or after the first token, die mid-stream (the connection is aborted), or send
one token every `token_interval` seconds. The streams follow OpenAI's SSE
format (`data: {chunk}` lines, then `data: [DONE]`) and Ollama's NDJSON, both
in chunked transfer encoding, one request per connection.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_TOKENS = ("Hello", ",", " world", "!")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeBackend:
    def __init__(self, models: tuple[str, ...] = ("fake-model",)) -> None:
        self.models = list(models)
        self.tokens: list[str] = list(DEFAULT_TOKENS)
        self.token_interval = 0.0
        self.chat_status = 200
        self.chat_error = "the fake backend failed"
        """The error message sent with a `chat_status` other than 200."""
        self.models_status = 200
        self.stall_models = False
        self.burst = False
        """Send the whole stream in one write, as a backend faster than its reader."""
        """Send nothing for the model list, as a backend too busy to list its models."""
        self.stall_before_first_token = False
        self.stall_after: int | None = None
        self.done_reason = "stop"
        """Why the stream ends: "stop", or "length" for an answer cut short by its limit."""
        """Stop sending after this many tokens, keeping the connection open."""
        self.die_after: int | None = None
        """Abort the connection after this many tokens."""
        self.requests: list[RecordedRequest] = []
        self.client_left = threading.Event()
        """Set when a client closes a chat stream before its end."""
        self.streams_open = 0
        self.tokens_sent = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.method == "POST"]

    def start(self) -> FakeBackend:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake backend did not start")
        return self

    def stop(self) -> None:
        """Close the listening socket and abort every open connection."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            request = await _read_request(reader)
            if request is not None:
                self.requests.append(request)
                await self._respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        route = (request.method, request.path)
        if request.method == "GET" and self.stall_models:
            await reader.read()
        elif route == ("GET", "/v1/models"):
            listing = {
                "object": "list",
                "data": [{"id": m, "object": "model"} for m in self.models],
            }
            await _send_json(writer, self.models_status, listing)
        elif route == ("GET", "/api/tags"):
            listing = {"models": [{"name": m, "model": m} for m in self.models]}
            await _send_json(writer, self.models_status, listing)
        elif route == ("POST", "/v1/chat/completions"):
            await self._stream(reader, writer, OpenAIShape())
        elif route == ("POST", "/api/chat"):
            await self._stream(reader, writer, OllamaShape())
        else:
            await _send_json(writer, 404, {"error": f"no route {request.path}"})

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shape: Shape
    ) -> None:
        if self.chat_status != 200:
            await _send_json(writer, self.chat_status, shape.error(self.chat_error))
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + shape.media_type + b"\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        hangup = asyncio.ensure_future(reader.read(1))
        self.streams_open += 1
        try:
            await self._send_tokens(writer, shape, hangup)
        finally:
            self.streams_open -= 1
            hangup.cancel()

    async def _send_tokens(
        self, writer: asyncio.StreamWriter, shape: Shape, hangup: asyncio.Future[bytes]
    ) -> None:
        if self.burst:
            lines = [*shape.opening(), *map(shape.token, self.tokens)]
            lines.extend(shape.closing(len(self.tokens), self.done_reason))
            writer.write(b"".join(_chunk(line) for line in lines) + b"0\r\n\r\n")
            await writer.drain()
            self.tokens_sent += len(self.tokens)
            return
        for line in shape.opening():
            await _send_chunk(writer, line)
        if self.stall_before_first_token:
            await self._wait_for_hangup(hangup)
            return

        for index, token in enumerate(self.tokens):
            if index == self.die_after:
                writer.transport.abort()
                return
            if index == self.stall_after:
                await self._wait_for_hangup(hangup)
                return
            if hangup.done():
                self.client_left.set()
                return
            await _send_chunk(writer, shape.token(token))
            self.tokens_sent += 1
            if self.token_interval:
                await asyncio.wait([hangup], timeout=self.token_interval)

        for line in shape.closing(len(self.tokens), self.done_reason):
            await _send_chunk(writer, line)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _wait_for_hangup(self, hangup: asyncio.Future[bytes]) -> None:
        await hangup
        self.client_left.set()


class Shape:
    media_type = b""

    def opening(self) -> list[bytes]:
        return []

    def token(self, text: str) -> bytes:
        raise NotImplementedError

    def closing(self, count: int, reason: str) -> list[bytes]:
        raise NotImplementedError

    def error(self, message: str) -> Any:
        raise NotImplementedError


class OpenAIShape(Shape):
    media_type = b"text/event-stream"

    def __init__(self) -> None:
        self.created = int(time.time())

    def opening(self) -> list[bytes]:
        return [self._event(self._chunk({"role": "assistant", "content": ""}, None))]

    def token(self, text: str) -> bytes:
        return self._event(self._chunk({"content": text}, None))

    def closing(self, count: int, reason: str) -> list[bytes]:
        usage = {"prompt_tokens": 7, "completion_tokens": count, "total_tokens": 7 + count}
        final = self._chunk({}, reason)
        usage_chunk = {**self._chunk({}, None), "choices": [], "usage": usage}
        return [self._event(final), self._event(usage_chunk), b"data: [DONE]\n\n"]

    def error(self, message: str) -> Any:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}

    def _chunk(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"


class OllamaShape(Shape):
    media_type = b"application/x-ndjson"

    def token(self, text: str) -> bytes:
        return self._line({"message": {"role": "assistant", "content": text}, "done": False})

    def closing(self, count: int, reason: str) -> list[bytes]:
        final = {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
            "total_duration": 5_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": 7,
            "prompt_eval_duration": 2_000_000,
            "eval_count": count,
            "eval_duration": 2_000_000,
        }
        return [self._line(final)]

    def error(self, message: str) -> Any:
        return {"error": message}

    @staticmethod
    def _line(data: dict[str, Any]) -> bytes:
        return json.dumps({"model": "fake-model", **data}).encode() + b"\n"


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    body = json.loads(raw) if raw else None
    return RecordedRequest(method, path, headers, body)


async def _send_json(writer: asyncio.StreamWriter, status: int, data: Any) -> None:
    body = json.dumps(data).encode()
    writer.write(
        f"HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(_chunk(data))
    await writer.drain()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
