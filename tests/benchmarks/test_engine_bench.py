"""The engine benchmark's helpers: its HTTP client, its statistics and its Markdown page."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from enginebench import report, wire
from enginebench.clients import Generation
from enginebench.measure import ConcurrentResult, ConcurrentRound
from gatewaybench.report import cpu_model

OTHER_SECTION = "## Gateway\n\nGateway numbers.\n"


def test_replace_section_keeps_other_sections() -> None:
    page = "# Benchmarks\n\n## Engine\n\nold numbers\n\n" + OTHER_SECTION

    updated = report.replace_section(page, "## Engine\n\nnew numbers\n")

    assert "new numbers" in updated
    assert "old numbers" not in updated
    assert updated.endswith(OTHER_SECTION)


def test_replace_section_keeps_sections_before() -> None:
    page = "# Benchmarks\n\n" + OTHER_SECTION + "\n## Engine\n\nold numbers\n"

    updated = report.replace_section(page, "## Engine\n\nnew numbers\n")

    assert updated == "# Benchmarks\n\n" + OTHER_SECTION + "\n## Engine\n\nnew numbers\n"


def test_replace_section_appends_when_missing() -> None:
    updated = report.replace_section("# Benchmarks\n\nIntro.\n", "## Engine\n\nnumbers\n")

    assert updated == "# Benchmarks\n\nIntro.\n\n## Engine\n\nnumbers\n"


def test_replace_section_ignores_subsections() -> None:
    page = "## Engine\n\n### One stream\n\nold\n\n" + OTHER_SECTION

    updated = report.replace_section(page, "## Engine\n\nnew\n")

    assert updated == "## Engine\n\nnew\n\n" + OTHER_SECTION


def test_update_page_creates_page(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"

    report.update_page(page, "## Engine\n\nnumbers\n")

    assert page.read_text().startswith("# Benchmarks\n")
    assert page.read_text().endswith("## Engine\n\nnumbers\n")


def test_cpu_model_reads_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu\n")

    assert cpu_model(cpuinfo) == "Example CPU 9000"


def test_cpu_model_without_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n")

    assert cpu_model(cpuinfo) == "unknown"


def _generation(tokens: int, started: float, first: float, last: float) -> Generation:
    return Generation(
        tokens=tokens, started=started, first_token=first, last_token=last, ended=last
    )


def test_decode_rate_leaves_out_first_token() -> None:
    generation = _generation(tokens=11, started=0.0, first=1.0, last=2.0)

    assert generation.decode_rate == pytest.approx(10.0)
    assert generation.time_to_first_token_s == pytest.approx(1.0)
    assert generation.end_to_end_rate == pytest.approx(5.5)


def test_decode_rate_of_one_token_is_zero() -> None:
    assert _generation(tokens=1, started=0.0, first=1.0, last=1.0).decode_rate == 0.0


def test_concurrent_round_aggregates_all_streams() -> None:
    generations = [
        _generation(tokens=10, started=0.0, first=0.1, last=1.0),
        _generation(tokens=30, started=0.0, first=0.3, last=2.0),
    ]

    round_ = ConcurrentRound(streams=2, generations=generations, started=0.0, ended=2.0)

    assert round_.aggregate_rate == pytest.approx(20.0)
    assert round_.median_ttft_s == pytest.approx(0.2)


def _round(streams: int, tokens: int, seconds: float) -> ConcurrentRound:
    generation = _generation(tokens=tokens, started=0.0, first=0.1, last=seconds)
    return ConcurrentRound(streams=streams, generations=[generation], started=0.0, ended=seconds)


def test_many_streams_verdict_uses_median_and_best_rounds() -> None:
    result = ConcurrentResult()
    # Engine rounds: 100, 50, 200 tokens/s; llama-server rounds: 100, 100, 100 tokens/s.
    for engine_seconds in (1.0, 2.0, 0.5):
        result.add(report.ENGINE, _round(8, 100, engine_seconds))
        result.add(report.LLAMA_SERVER, _round(8, 100, 1.0))

    verdict = report.many_streams_verdict(result, [8])

    assert "aggregate rate 1.000" in verdict
    assert "best rounds 2.000" in verdict
    assert verdict.rstrip().endswith("target 1.0: met")


def test_many_streams_table_has_best_round_ratio() -> None:
    result = ConcurrentResult()
    result.add(report.ENGINE, _round(1, 50, 1.0))
    result.add(report.LLAMA_SERVER, _round(1, 100, 1.0))

    row = report.many_streams_table(result, [1]).splitlines()[-1]

    assert row == "| 1 | 100 | 100 | 50.0 | 100.0 | 0.500 | 0.500 | 1.00x | 1.00x |"


class _ChunkedServer:
    """A loopback HTTP server that sends the same raw response to every request."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        self.requests.append(head + await reader.readexactly(length))
        writer.write(self.response)
        await writer.drain()
        writer.close()


async def _lines_from(response: bytes) -> tuple[list[bytes], list[bytes]]:
    server = _ChunkedServer(response)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        endpoint = wire.Endpoint("127.0.0.1", port)
        lines = [line async for line in wire.post_lines(endpoint, "/api/generate", {"a": 1})]
    finally:
        listener.close()
        await listener.wait_closed()
    return lines, server.requests


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'6\r\n{"a":1\r\n'  # a line split across two chunks
    b'9\r\n}\n{"b":2}\r\n'
    b"1\r\n\n\r\n"
    b"0\r\n\r\n"
)


def test_post_lines_joins_lines_across_chunks() -> None:
    lines, _ = asyncio.run(_lines_from(CHUNKED))

    assert lines == [b'{"a":1}', b'{"b":2}']


def test_post_lines_sends_json_body() -> None:
    _, requests = asyncio.run(_lines_from(CHUNKED))

    assert requests[0].startswith(b"POST /api/generate HTTP/1.1\r\n")
    assert requests[0].endswith(b'\r\n\r\n{"a": 1}')


def test_post_lines_reads_sized_body() -> None:
    response = b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"c":3}\n'

    lines, _ = asyncio.run(_lines_from(response))

    assert lines == [b'{"c":3}']


def test_post_lines_raises_on_error_status() -> None:
    response = b'HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n{"error":"missing"}'

    with pytest.raises(wire.HTTPStatusError, match="404 Not Found"):
        asyncio.run(_lines_from(response))


def test_endpoint_rejects_url_without_port() -> None:
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        wire.Endpoint.from_url("http://127.0.0.1/")
