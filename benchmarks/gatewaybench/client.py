"""A lean streaming client for OpenAI's chat completions API, timing each token it receives.

It speaks HTTP/1.1 through an asyncio Protocol, keeps its connection alive
between requests, and parses only what the timing needs: the status, the
chunked framing, the `data:` events and, in each token event, the content
string, found with bytes.find. Being lean matters on a 2-core machine, where
the client shares the CPUs with the servers it measures. The same client
code times both paths (straight to the backend and through the web app),
so its own cost is the same on both sides of each comparison.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

CONTENT_KEY = b'"content":'


def content_start(data: bytes, key: int) -> int:
    """Return where the non-empty content string after the `"content":` key at `key` starts.

    The index is that of the string's opening quote; -1 when `key` is -1 or the
    content is empty or not a string. Servers differ in whether a space follows
    the colon.
    """
    if key < 0:
        return -1
    start = key + len(CONTENT_KEY)
    if data[start : start + 1] == b" ":
        start += 1
    if data[start : start + 1] != b'"' or data[start + 1 : start + 2] == b'"':
        return -1
    return start


@dataclass
class Stream:
    """The timing of one streamed chat completion, in seconds of time.monotonic()."""

    sent: float
    first_token: float | None = None
    done: float | None = None
    arrivals: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    """Send times that the benchmark backend wrote into each token, when present."""
    status: int | None = None
    """The HTTP status, once the response head arrived."""
    error: str | None = None

    @property
    def ttft(self) -> float:
        assert self.first_token is not None
        return self.first_token - self.sent

    @property
    def total(self) -> float:
        assert self.done is not None
        return self.done - self.sent


class Connection:
    """One keep-alive connection that sends chat requests one after another."""

    def __init__(self, host: str, port: int, path: str, api_key: str | None) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.api_key = api_key
        self.protocol: ResponseProtocol | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.protocol = await loop.create_connection(ResponseProtocol, self.host, self.port)

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.close()

    def request_bytes(self, body: dict[str, object]) -> bytes:
        data = json.dumps(body).encode()
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        if self.api_key:
            lines.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data

    async def chat(self, request: bytes, *, stamped: bool = False) -> Stream:
        """Send one request and read its SSE stream to `data: [DONE]`.

        A kept-alive connection that the server closed while it was idle (uvicorn
        closes them after 5 s) is reopened, and the request sent again, once.
        """
        reused = self.protocol is not None
        stream = await self._send(request, stamped)
        if reused and stream.error and stream.first_token is None and stream.status is None:
            stream = await self._send(request, stamped)
        return stream

    async def _send(self, request: bytes, stamped: bool) -> Stream:
        stream = Stream(sent=time.monotonic())
        try:
            if self.protocol is None:
                await self.open()
            assert self.protocol is not None
            stream.sent = time.monotonic()
            await self.protocol.exchange(request, stream, stamped)
        except (ConnectionError, OSError, ValueError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
            self.close()
            self.protocol = None
        return stream


class ResponseProtocol(asyncio.Protocol):
    """Reads one response at a time into a `Stream`, as its bytes arrive.

    A response is its head, then either a Content-Length body (an error, not a
    stream) or chunks until the empty one. Each chunk's data is split into
    events at blank lines, and every event is stamped with the time of the read
    that completed it.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.stream: Stream | None = None
        self.stamped = False
        self.finished: asyncio.Future[None] | None = None
        self.state = "head"
        self.needed = 0
        """Bytes of the body, or of the current chunk with its CRLF, that the parser waits for."""
        self.pending = b""
        """The start of an event whose end has not arrived yet."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.finished is not None and not self.finished.done():
            error = exc or ConnectionError("the server closed the connection mid-response")
            self.finished.set_exception(error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes, stream: Stream, stamped: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the connection is closed")
        self.stream = stream
        self.stamped = stamped
        self.state = "head"
        self.pending = b""
        self.finished = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.finished

    def data_received(self, data: bytes) -> None:
        if self.finished is None or self.finished.done():
            return
        self.buffer += data
        try:
            self._parse(time.monotonic())
        except ValueError as exc:
            self.finished.set_exception(exc)

    def _parse(self, now: float) -> None:
        buffer = self.buffer
        while True:
            if self.state == "head":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._on_head(bytes(buffer[: end + 4]))
                del buffer[: end + 4]
            elif self.state == "size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                self.needed = int(buffer[:end], 16) + 2
                del buffer[: end + 2]
                self.state = "chunk"
            elif len(buffer) < self.needed:
                return
            elif self.state == "body":
                self._on_error_body(bytes(buffer[: self.needed]))
                del buffer[: self.needed]
                return
            else:
                data = bytes(buffer[: self.needed - 2])
                del buffer[: self.needed]
                if not data:
                    self._finish()
                    return
                self.state = "size"
                self._on_chunk(data, now)

    def _on_head(self, head: bytes) -> None:
        assert self.stream is not None
        status = self.stream.status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            if status != 200:
                self.stream.error = f"HTTP {status}"
            self.state = "size"
            return
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        self.needed = int(length.group(1)) if length else 0
        self.state = "body"

    def _on_error_body(self, body: bytes) -> None:
        assert self.stream is not None
        text = body[:300].decode(errors="replace")
        self.stream.error = f"HTTP {self.stream.status}, not a stream: {text}"
        self._finish()

    def _finish(self) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def _on_chunk(self, data: bytes, now: float) -> None:
        if self.pending:
            data = self.pending + data
        *events, self.pending = data.split(b"\n\n")
        for event in events:
            self._on_event(event, now)

    def _on_event(self, event: bytes, now: float) -> None:
        stream = self.stream
        assert stream is not None
        if event == b"data: [DONE]":
            stream.done = now
            return
        if event.startswith(b'data: {"error"'):
            stream.error = event[6:300].decode(errors="replace")
            return
        # A token event carries non-empty content; the benchmark backend's content is its
        # send time.
        start = content_start(event, event.find(CONTENT_KEY))
        if start < 0:
            return
        if stream.first_token is None:
            stream.first_token = now
        if not self.stamped:
            stream.arrivals.append(now)
            return
        # The gateway relays the tokens that it read together as one event, so an event may
        # carry several stamps; each is a token that arrived now. Stamps need no escaping,
        # so the next quote ends the content.
        for stamp in event[start + 1 : event.index(b'"', start + 1)].split():
            stream.arrivals.append(now)
            stream.stamps.append(float(stamp))
