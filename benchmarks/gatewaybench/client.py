"""A lean streaming client for OpenAI's chat completions API, timing each token it receives.

It speaks HTTP/1.1 over asyncio streams, keeps its connection alive between
requests, and parses only what the timing needs: the status, the chunked
framing and the `data:` lines. Being lean matters on a 2-core machine, where
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

# A token event carries non-empty content; the benchmark backend's content is its send time.
# Servers differ in whether a space follows the colon.
_CONTENT = re.compile(rb'"content": ?"((?:[^"\\]|\\.)+)"')


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
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

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
        reused = self.reader is not None
        stream = await self._send(request, stamped)
        if reused and stream.error and stream.first_token is None and stream.status is None:
            stream = await self._send(request, stamped)
        return stream

    async def _send(self, request: bytes, stamped: bool) -> Stream:
        if self.reader is None or self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        stream = Stream(sent=time.monotonic())
        try:
            self.writer.write(request)
            await self._read_response(self.reader, stream, stamped)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
            self.close()
            self.reader = self.writer = None
        return stream

    async def _read_response(
        self, reader: asyncio.StreamReader, stream: Stream, stamped: bool
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        status = stream.status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" not in head.lower():
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            stream.error = f"HTTP {status}, not a stream: {body[:300].decode(errors='replace')}"
            return
        if status != 200:
            stream.error = f"HTTP {status}"

        pending = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return
            pending += data[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                self._on_event(event, stream, stamped)

    @staticmethod
    def _on_event(event: bytes, stream: Stream, stamped: bool) -> None:
        now = time.monotonic()
        if event == b"data: [DONE]":
            stream.done = now
            return
        if event.startswith(b'data: {"error"'):
            stream.error = event[6:300].decode(errors="replace")
            return
        match = _CONTENT.search(event)
        if match is None:
            return
        if stream.first_token is None:
            stream.first_token = now
        if not stamped:
            stream.arrivals.append(now)
            return
        # The gateway relays the tokens that it read together as one event, so an event may
        # carry several stamps; each is a token that arrived now.
        for stamp in match.group(1).split():
            stream.arrivals.append(now)
            stream.stamps.append(float(stamp))
