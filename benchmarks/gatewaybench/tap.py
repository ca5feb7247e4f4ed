"""A timing relay for the gateway benchmark: it forwards TCP to a backend and stamps each chat.

Run it as its own process:
`python -m gatewaybench.tap --port 8002 --upstream-port 8001 --report times.txt`.
Both paths of the added-latency test reach the backend through it: the
client straight, and the web app as its gateway backend. For each streamed
chat it appends one line to the report file with three times, in seconds
of `time.monotonic()` (one clock for all processes on Linux). They are the
arrival of the request from downstream, of the backend's first token and
of its `data: [DONE]`. The span from the first to either of the others is
the backend's own time for that chat. Subtracting it from the client's
time for the same chat leaves only what lies between the client and the
tap. So the backend's variation from one chat to the next drops out of the
comparison: with a real model, it is larger than the whole target.

It parses no HTTP, to stay lean on a machine whose cores it shares. A
request is a downstream read that starts with `POST `. A first token is
the first read from the backend with a non-empty `"content":` string. The
end is a read that contains `data: [DONE]`. The report line is written
before the read that ends the chat is forwarded, so a client that has
received `[DONE]` finds it in the file.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TextIO

import uvloop

from gatewaybench.client import CONTENT_KEY, content_start

_DONE = b"data: [DONE]"


def has_token(data: bytes) -> bool:
    """Return True if `data` contains a `"content":` key with a non-empty string value."""
    key = data.find(CONTENT_KEY)
    while key >= 0:
        if content_start(data, key) >= 0:
            return True
        key = data.find(CONTENT_KEY, key + 1)
    return False


class Downstream(asyncio.Protocol):
    """A connection from the client or the web app, paired with its own connection upstream."""

    def __init__(self, upstream_port: int, report: TextIO) -> None:
        self.upstream_port = upstream_port
        self.report = report
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.waiting: list[bytes] = []
        """Downstream reads that arrived before the upstream connection was open."""
        self.requested: float | None = None
        self.first_token: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: Upstream(self), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.close()
            return
        self.upstream = upstream
        for data in self.waiting:
            upstream.write(data)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"POST "):
            self.requested = time.monotonic()
            self.first_token = None
        if self.upstream is None:
            self.waiting.append(data)
        else:
            self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        if self.requested is not None:
            now = time.monotonic()
            if self.first_token is None and has_token(data):
                self.first_token = now
            if self.first_token is not None and _DONE in data:
                self.report.write(f"{self.requested!r} {self.first_token!r} {now!r}\n")
                self.requested = None
        if self.transport is not None:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.upstream is not None:
            self.upstream.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Upstream(asyncio.Protocol):
    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.downstream.from_upstream(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.downstream.close()


async def serve(settings: argparse.Namespace, report: TextIO) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: Downstream(settings.upstream_port, report), "127.0.0.1", settings.port
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True, help="the backend's port")
    parser.add_argument("--report", required=True, help="file that each chat's line is added to")
    settings = parser.parse_args()
    # Line-buffered, so that each line is in the file before the read that ends its chat is
    # forwarded.
    with open(settings.report, "a", buffering=1) as report:
        uvloop.run(serve(settings, report))


if __name__ == "__main__":
    main()
