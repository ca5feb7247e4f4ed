"""The gateway benchmark's backend and client, against each other over loopback."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gatewaybench.backend import BackendProtocol, StreamCounter, TokenClock
from gatewaybench.client import Connection
from gatewaybench.measure import OverheadResult

pytestmark = pytest.mark.anyio

BODY: dict[str, object] = {"model": "bench-model", "messages": [], "stream": True}


async def start_backend(interval: float) -> tuple[asyncio.Server, int, StreamCounter]:
    settings = argparse.Namespace(model="bench-model", tokens=8, token_interval=interval)
    counter = StreamCounter()
    clock = TokenClock()
    server = await asyncio.get_running_loop().create_server(
        lambda: BackendProtocol(settings, counter, clock), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    return server, port, counter


@pytest.fixture
async def paced() -> AsyncIterator[tuple[int, StreamCounter]]:
    server, port, counter = await start_backend(0.01)
    async with server:
        yield port, counter


async def test_paced_stream_carries_one_stamp_per_token(
    paced: tuple[int, StreamCounter],
) -> None:
    port, counter = paced
    connection = Connection("127.0.0.1", port, "/v1/chat/completions", None)
    before = time.monotonic()
    stream = await connection.chat(
        connection.request_bytes({**BODY, "max_tokens": 5}), stamped=True
    )
    connection.close()

    assert stream.error is None
    assert stream.status == 200
    assert stream.done is not None
    assert len(stream.stamps) == 5
    assert len(stream.arrivals) == 5
    for stamp, arrival in zip(stream.stamps, stream.arrivals, strict=True):
        assert before <= stamp <= arrival
    assert stream.stamps == sorted(stream.stamps)
    assert counter.open == 0
    assert counter.peak == 1


async def test_connection_sends_requests_one_after_another(
    paced: tuple[int, StreamCounter],
) -> None:
    port, _ = paced
    connection = Connection("127.0.0.1", port, "/v1/chat/completions", None)
    request = connection.request_bytes({**BODY, "max_tokens": 2})
    first = await connection.chat(request, stamped=True)
    protocol = connection.protocol
    second = await connection.chat(request, stamped=True)
    connection.close()

    assert first.error is None
    assert second.error is None
    assert len(second.stamps) == 2
    assert connection.protocol is protocol


async def test_unstamped_stream_counts_tokens() -> None:
    server, port, _ = await start_backend(0.0)
    async with server:
        connection = Connection("127.0.0.1", port, "/v1/chat/completions", None)
        stream = await connection.chat(connection.request_bytes(BODY))
        connection.close()

    assert stream.error is None
    assert len(stream.arrivals) == 8
    assert stream.stamps == []
    assert stream.first_token is not None


async def test_unknown_path_is_an_error_not_a_stream(paced: tuple[int, StreamCounter]) -> None:
    port, _ = paced
    connection = Connection("127.0.0.1", port, "/v2/none", None)
    stream = await connection.chat(connection.request_bytes(BODY))
    connection.close()

    assert stream.status == 404
    assert stream.error is not None
    assert stream.error.startswith("HTTP 404, not a stream: ")
    assert "no route /v2/none" in stream.error


async def test_connection_reopens_after_server_closed_it(
    paced: tuple[int, StreamCounter],
) -> None:
    port, _ = paced
    connection = Connection("127.0.0.1", port, "/v1/chat/completions", None)
    request = connection.request_bytes({**BODY, "max_tokens": 1})
    await connection.chat(request)
    assert connection.protocol is not None
    assert connection.protocol.transport is not None
    connection.protocol.transport.close()
    await asyncio.sleep(0.01)

    stream = await connection.chat(request)
    connection.close()

    assert stream.error is None
    assert len(stream.arrivals) == 1


async def test_stream_cut_short_is_an_error() -> None:
    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut_short, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        connection = Connection("127.0.0.1", port, "/v1/chat/completions", None)
        stream = await connection.chat(connection.request_bytes(BODY))

    assert stream.error is not None
    assert stream.error.startswith("ConnectionError")
    assert stream.done is None


def test_noise_floor_uses_consecutive_direct_rounds() -> None:
    result = OverheadResult("model", "bench-model", rounds=4, max_tokens=8)
    result.direct.ttft = [0.010, 0.012, 0.011, 0.015]
    result.gateway.ttft = [0.011, 0.013, 0.012, 0.016]

    assert result.noise("ttft", 1.0) == pytest.approx(0.004)
    assert result.noise("ttft", 0.0) == pytest.approx(-0.001)
    assert result.added("ttft", 0.5) == pytest.approx(0.001)
