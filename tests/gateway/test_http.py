"""The gateway's HTTP/1.1 client against small asyncio servers on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from llmcloud.gateway.http import (
    ConnectError,
    ConnectionPool,
    ReadTimeout,
    RemoteProtocolError,
)
from llmcloud.tls.ca import init_ca, issue_certificate
from tests.gateway.conftest import closed_port_url

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
KEEP_ALIVE_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Server:
    """A loopback server that runs `handler` for each connection and counts the connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    server.url = f"{scheme}://127.0.0.1:{port}/base"
    async with listener:
        yield server


def pool_for(
    url: str,
    *,
    read_timeout: float = 5.0,
    max_idle: int = 4,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionPool:
    return ConnectionPool(
        url,
        headers={"Authorization": "Bearer test-key"},
        connect_timeout=1.0,
        read_timeout=read_timeout,
        max_idle=max_idle,
        ssl_context=ssl_context,
    )


def server_tls(data_dir: Path) -> tuple[ssl.SSLContext, Path]:
    """Return a server context with a certificate for 127.0.0.1, and its CA certificate."""
    ca_cert = init_ca(data_dir, 30)
    issued = issue_certificate(data_dir, "backend", ["127.0.0.1"], lifetime_days=1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    return context, ca_cert


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(KEEP_ALIVE_REPLY)
        await writer.drain()


async def test_request_sends_path_host_and_headers() -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))
        writer.write(KEEP_ALIVE_REPLY)
        await writer.drain()

    async with serving(record) as server:
        pool = pool_for(server.url)
        response = await pool.request("POST", "/v1/chat", b'{"a":1}')
        await response.read(100)
        response.close()
        await pool.aclose()

    head = heads[0].decode()
    assert head.startswith("POST /base/v1/chat HTTP/1.1\r\n")
    assert f"Host: {server.url.split('/')[2]}\r\n" in head
    assert "Authorization: Bearer test-key\r\n" in head
    assert "Content-Length: 7\r\n" in head


async def test_connection_is_reused_after_full_read() -> None:
    async with serving(keep_alive) as server:
        pool = pool_for(server.url)
        for _ in range(3):
            response = await pool.request("GET", "/models")
            body = await response.read(100)
            response.close()
        await pool.aclose()

    assert body == b"hello"
    assert server.connections == 1


async def test_response_closed_early_closes_connection() -> None:
    async def unfinished_then_whole(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        if server.connections == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await reader.read()
            return
        writer.write(KEEP_ALIVE_REPLY)
        await writer.drain()

    async with serving(unfinished_then_whole) as server:
        pool = pool_for(server.url)
        first = await pool.request("GET", "/models")
        first.close()
        second = await pool.request("GET", "/models")
        body = await second.read(100)
        second.close()
        await pool.aclose()

    assert body == b"hello"
    assert server.connections == 2


async def test_idle_connections_are_capped() -> None:
    async with serving(keep_alive) as server:
        pool = pool_for(server.url, max_idle=1)
        responses = [await pool.request("GET", "/models") for _ in range(3)]
        for response in responses:
            await response.read(100)
            response.close()
        idle = len(pool._idle)
        await pool.aclose()

    assert idle == 1


async def test_connection_closed_by_server_is_not_reused() -> None:
    async def close_after_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(KEEP_ALIVE_REPLY)
        await writer.drain()

    async with serving(close_after_reply) as server:
        pool = pool_for(server.url)
        for _ in range(2):
            response = await pool.request("GET", "/models")
            body = await response.read(100)
            response.close()
            await asyncio.sleep(0.05)
        await pool.aclose()

    assert body == b"hello"
    assert server.connections == 2


async def test_chunked_lines_are_split_across_reads() -> None:
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: o", b"ne\r\n\r\ndata: tw", "o é\n".encode(), b"last"):
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(stream) as server:
        pool = pool_for(server.url)
        response = await pool.request("POST", "/chat", b"{}")
        lines: list[str] = []
        while batch := await response.read_lines():
            lines.extend(batch)
        complete = response.complete
        response.close()
        await pool.aclose()

    assert lines == ["data: one", "", "data: two é", "last"]
    assert complete


async def test_body_until_close_is_complete() -> None:
    async def unframed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nline one\nline two")
        await writer.drain()

    async with serving(unframed) as server:
        pool = pool_for(server.url)
        response = await pool.request("GET", "/models")
        body = await response.read(1000)
        response.close()
        await pool.aclose()

    assert body == b"line one\nline two"


async def test_body_larger_than_read_buffer_is_read_whole() -> None:
    body = b"x" * (1024 * 1024)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async with serving(large) as server:
        pool = pool_for(server.url, read_timeout=2.0)
        response = await pool.request("GET", "/models")
        received = await response.read(2 * len(body))
        response.close()
        await pool.aclose()

    assert received == body


async def test_line_longer_than_read_buffer_is_read_whole() -> None:
    line = "x" * (1024 * 1024)

    async def long_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        data = f"{line}\nend\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()

    async with serving(long_line) as server:
        pool = pool_for(server.url, read_timeout=2.0)
        response = await pool.request("POST", "/chat", b"{}")
        lines: list[str] = []
        while batch := await response.read_lines():
            lines.extend(batch)
        response.close()
        await pool.aclose()

    assert lines == [line, "end"]


async def test_stalled_body_raises_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()

    async with serving(stall) as server:
        pool = pool_for(server.url, read_timeout=0.2)
        response = await pool.request("POST", "/chat", b"{}")
        with pytest.raises(ReadTimeout):
            await response.read_lines()
        response.close()
        await pool.aclose()


async def test_connection_lost_mid_body_raises() -> None:
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n")
        await writer.drain()
        writer.transport.abort()

    async with serving(die) as server:
        pool = pool_for(server.url)
        response = await pool.request("POST", "/chat", b"{}")
        first = await response.read_lines()
        with pytest.raises(RemoteProtocolError):
            await response.read_lines()
        response.close()
        await pool.aclose()

    assert first == ["hello"]


async def test_invalid_response_raises_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(garbage) as server:
        pool = pool_for(server.url)
        with pytest.raises(RemoteProtocolError):
            await pool.request("GET", "/models")
        await pool.aclose()


async def test_closed_port_raises_connect_error() -> None:
    pool = pool_for(closed_port_url())
    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        await pool.request("GET", "/models")
    await pool.aclose()


async def test_closing_pool_fails_response_in_progress() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(stall) as server:
        pool = pool_for(server.url)
        response = await pool.request("POST", "/chat", b"{}")
        reading = asyncio.ensure_future(response.read_lines())
        await asyncio.sleep(0.05)
        await pool.aclose()
        with pytest.raises(RemoteProtocolError):
            await reading


async def test_https_request_verifies_certificate(tmp_path: Path) -> None:
    tls, ca_cert = server_tls(tmp_path)
    async with serving(keep_alive, tls) as server:
        trusted = ssl.create_default_context(cafile=str(ca_cert))
        pool = pool_for(server.url, ssl_context=trusted)
        response = await pool.request("GET", "/models")
        body = await response.read(100)
        response.close()
        await pool.aclose()

    assert body == b"hello"


async def test_https_with_unknown_ca_raises_connect_error(tmp_path: Path) -> None:
    tls, _ = server_tls(tmp_path)
    async with serving(keep_alive, tls) as server:
        pool = pool_for(server.url, ssl_context=ssl.create_default_context())
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await pool.request("GET", "/models")
        await pool.aclose()
