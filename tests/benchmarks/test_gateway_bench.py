"""The gateway benchmark's backend and client, against each other over loopback."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gatewaybench import report
from gatewaybench.backend import BackendProtocol, StreamCounter, TokenClock
from gatewaybench.client import Connection
from gatewaybench.measure import ConcurrencyResult, OverheadResult, TapReport
from gatewaybench.tap import Downstream, has_token

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


def test_backend_time_removed_per_round() -> None:
    result = OverheadResult("model", "bench-model", rounds=2, max_tokens=8)
    # The backend took 10 ms, then 30 ms; the proxy's path added 1 ms both times.
    result.direct.ttft = [0.0102, 0.0302]
    result.direct.backend_ttft = [0.0100, 0.0300]
    result.gateway.ttft = [0.0312, 0.0112]
    result.gateway.backend_ttft = [0.0300, 0.0100]

    assert result.tapped
    assert result.added("ttft", 0.5) == pytest.approx(-0.019)
    assert result.added_beyond_backend("ttft", 0.5) == pytest.approx(0.001)
    assert result.added_beyond_backend("ttft", 1.0) == pytest.approx(0.001)
    assert result.noise_beyond_backend("ttft", 1.0) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'data: {"delta":{"content":"Hi"}}', True),
        (b'data: {"delta":{"content": "Hi"}}', True),
        (b'data: {"delta":{"role":"assistant","content":""}}', False),
        (b'{"content":""}\n\n{"content":"x"}', True),
        (b'data: {"delta":{}}', False),
        (b'{"content":null}', False),
    ],
)
def test_tap_finds_token_in_read(data: bytes, expected: bool) -> None:
    assert has_token(data) is expected


async def test_tap_times_within_client_times(tmp_path: Path) -> None:
    backend, backend_port, _ = await start_backend(0.002)
    report_path = tmp_path / "tap.txt"
    with report_path.open("a", buffering=1) as report:
        tap = await asyncio.get_running_loop().create_server(
            lambda: Downstream(backend_port, report), "127.0.0.1", 0
        )
        async with backend, tap:
            port = tap.sockets[0].getsockname()[1]
            reader = TapReport(report_path)
            # A request that is not a chat, as the gateway's health checks are, has no line.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/v1/models")).status_code == 200
            connection = Connection("127.0.0.1", port, "/v1/chat/completions", None)
            request = connection.request_bytes({**BODY, "max_tokens": 3})
            timed = []
            for _ in range(2):
                stream = await connection.chat(request, stamped=True)
                timed.append((stream, reader.times_of(stream)))
            connection.close()
            reader.close()

    assert len(report_path.read_text().splitlines()) == 2
    for stream, times in timed:
        assert stream.error is None
        assert times is not None
        assert stream.first_token is not None
        assert stream.done is not None
        assert stream.sent <= times.requested <= stream.stamps[0] <= times.first_token
        assert times.first_token <= stream.first_token
        assert stream.stamps[-1] <= times.done <= stream.done


def test_target_judged_without_backend_time() -> None:
    result = OverheadResult("real model", "bench-model", rounds=3, max_tokens=8)
    result.direct.ttft = result.direct.total = [0.010, 0.040, 0.020]
    result.direct.backend_ttft = result.direct.backend_total = [0.0099, 0.0399, 0.0199]
    # End to end, the rounds differ by up to 30 ms; at the relay, by 0.5 ms.
    result.gateway.ttft = result.gateway.total = [0.040, 0.0105, 0.0205]
    result.gateway.backend_ttft = result.gateway.backend_total = [0.0394, 0.0099, 0.0199]

    table = report.beyond_backend_table([result])
    untapped = OverheadResult("fast", "bench-model", rounds=3, max_tokens=8)
    untapped.direct.ttft = untapped.gateway.ttft = [0.001, 0.001, 0.001]

    assert "| real model | 0.50 / 0.50 | 0.50 / 0.50 | 0.00 / 0.00 | yes |" in table
    assert report.beyond_backend_table([untapped]).endswith("| fast | | | | **no** |")


def concurrency_result(path: str, streams: int, gap: float) -> ConcurrencyResult:
    return ConcurrencyResult(
        path,
        streams,
        tokens=2,
        completed=streams,
        errors=[],
        peak_open=streams,
        ttft=[0.001],
        added_gaps=[gap],
        relay_delays=[0.001],
        seconds=1.0,
    )


def test_stream_counts_below_target_are_steps_not_misses() -> None:
    table = report.concurrency_table(
        [
            concurrency_result("via /v1", 250, 0.001),
            concurrency_result("via /v1", 500, 0.090),
            concurrency_result("via /v1", 1000, 0.001),
        ]
    )
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in table.splitlines()[2:]]
    assert verdicts == ["(fewer streams)", "**no**", "yes"]
