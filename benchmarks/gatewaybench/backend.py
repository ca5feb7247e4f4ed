"""A fast fake model server for the gateway benchmark: OpenAI's streaming chat API, little else.

Run it as its own process: `python -m gatewaybench.backend --port 8001 --token-interval 0.05`.
It serves GET /v1/models (one model, named by `--model`), GET /stats
(streams open now and the most open at once) and POST /v1/chat/completions
with `"stream": true`, which streams `max_tokens` tokens (default 8) as
server-sent events in chunked encoding. The first token goes out at once
and each later one `--token-interval` seconds after the one before it, on
a fixed schedule. Every token's text is the sender's `time.monotonic()`
followed by a space, so a client on the same machine can tell how long the
token took to reach it (CLOCK_MONOTONIC is one clock for all processes on
Linux). Connections are kept alive between requests.

It reads no prompt and builds each event from a fixed template, so it costs
little CPU per token and leaves the machine's cores to the web app under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
)
_CHUNK_PREFIX = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
    '"choices":[{"index":0,"delta":'
)


class StreamCounter:
    """Streams open now and the most open at once since start."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0

    def enter(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def leave(self) -> None:
        self.open -= 1


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def event(delta: str, finish: str | None) -> bytes:
    reason = "null" if finish is None else json.dumps(finish)
    return (_CHUNK_PREFIX + delta + f',"finish_reason":{reason}}}]}}\n\n').encode()


def json_response(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return head.encode() + b"\r\n\r\n" + data


async def stream_tokens(
    writer: asyncio.StreamWriter, count: int, interval: float, counter: StreamCounter
) -> None:
    writer.write(_HEAD + chunk(event('{"role":"assistant","content":""}', None)))
    counter.enter()
    try:
        start = time.monotonic()
        for index in range(count):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            text = json.dumps(f"{time.monotonic():.6f} ")
            writer.write(chunk(event('{"content":' + text + "}", None)))
            await writer.drain()
        usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}
        closing = event("{}", "stop")
        usage_event = f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
        writer.write(
            chunk(closing) + chunk(usage_event) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        )
        await writer.drain()
    finally:
        counter.leave()


async def handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    settings: argparse.Namespace,
    counter: StreamCounter,
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in header_lines if line)
            )
            length = int(headers.get("content-length", "0"))
            body = json.loads(await reader.readexactly(length)) if length else {}
            method, path, _ = request_line.split(" ", 2)

            if (method, path) == ("GET", "/v1/models"):
                listing = {"object": "list", "data": [{"id": settings.model, "object": "model"}]}
                writer.write(json_response(200, listing))
            elif (method, path) == ("GET", "/stats"):
                writer.write(json_response(200, {"open": counter.open, "peak": counter.peak}))
            elif (method, path) == ("POST", "/v1/chat/completions"):
                count = int(body.get("max_tokens") or settings.tokens)
                await stream_tokens(writer, count, settings.token_interval, counter)
            else:
                writer.write(json_response(404, {"error": {"message": f"no route {path}"}}))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(settings: argparse.Namespace) -> None:
    counter = StreamCounter()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(reader, writer, settings, counter)

    server = await asyncio.start_server(on_connect, "127.0.0.1", settings.port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-model", help="the one model it lists")
    parser.add_argument("--tokens", type=int, default=8, help="tokens when max_tokens is unset")
    parser.add_argument("--token-interval", type=float, default=0.0, help="seconds per token")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
