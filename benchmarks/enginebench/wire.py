"""A small HTTP/1.1 client on asyncio streams, for POSTs whose responses stream lines.

The benchmark client shares the machine's cores with the server it measures,
so every microsecond it spends per streamed token slows that server. On the
2-core benchmark machine, httpx's `aiter_lines` took about 0.4 ms of CPU per
NDJSON line, and reading the chunked body straight off the socket as here
took about half of that. Both servers get the same client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    """A response whose status is not 200, with the start of its body."""


@dataclass(frozen=True)
class Endpoint:
    """Host and port of a server on loopback."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"invalid server URL {url!r}; expected http://HOST:PORT")
        return cls(parts.hostname, parts.port)


async def post_lines(endpoint: Endpoint, path: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
    """POST a JSON body and yield the response body line by line, without line endings."""
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        writer.write(_request(endpoint, path, body))
        headers = await _read_head(reader)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            pieces = _chunks(reader)
        else:
            pieces = _sized(reader, int(headers.get("content-length", "0")))
        pending = b""
        async for piece in pieces:
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield pending
    finally:
        writer.close()


async def post_json(endpoint: Endpoint, path: str, body: dict[str, Any]) -> Any:
    """POST a JSON body and return the decoded JSON response."""
    lines = [line async for line in post_lines(endpoint, path, body)]
    return json.loads(b"\n".join(lines))


def _request(endpoint: Endpoint, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {endpoint.host}:{endpoint.port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


async def _read_head(reader: asyncio.StreamReader) -> dict[str, str]:
    status_line = (await reader.readline()).decode("latin-1").strip()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if status_line.split(" ")[1:2] != ["200"]:
        start = (await reader.read(500)).decode("utf-8", "replace")
        raise HTTPStatusError(f"{status_line}: {start}")
    return headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def _sized(reader: asyncio.StreamReader, length: int) -> AsyncIterator[bytes]:
    if length:
        yield await reader.readexactly(length)
