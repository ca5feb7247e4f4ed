"""A fast fake model server for the gateway benchmark: OpenAI's streaming chat API, little else.

Run it as its own process: `python -m gatewaybench.backend --port 8001 --token-interval 0.05`.
It serves GET /v1/models (one model, named by `--model`), GET /stats
(streams open now and the most open at once) and POST /v1/chat/completions
with `"stream": true`, which streams `max_tokens` tokens (default 8) as
server-sent events in chunked encoding. The first token goes out at once
and each later one `--token-interval` seconds after the one before it, on
a fixed schedule. Every token's text is the sender's `time.monotonic()`,
taken just before the write, followed by a space, so a client on the same
machine can tell how long the token took to reach it (CLOCK_MONOTONIC is
one clock for all processes on Linux). Connections are kept alive between
requests.

It reads no prompt, and it is kept lean so that it leaves the machine's
cores to the web app under test: each connection is an asyncio Protocol,
each token is a stamp between two precomputed byte strings, and one timer
per tick of `TICK` seconds sends the due tokens of all paced streams, in
place of one sleeping task per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

import uvloop

TICK = 0.001
"""Timer resolution of paced streams in seconds; a token goes out at most this late."""

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
)
_CHUNK_PREFIX = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
    '"choices":[{"index":0,"delta":'
)
# A token event is _TOKEN_HEAD, the stamp and _TOKEN_TAIL; the stamp needs no JSON escaping.
_TOKEN_HEAD = (_CHUNK_PREFIX + '{"content":"').encode()
_TOKEN_TAIL = b' "},"finish_reason":null}]}\n\n'
_TOKEN_FIXED_LENGTH = len(_TOKEN_HEAD) + len(_TOKEN_TAIL)


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
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(delta: str, finish: str | None) -> bytes:
    reason = "null" if finish is None else json.dumps(finish)
    return (_CHUNK_PREFIX + delta + f',"finish_reason":{reason}}}]}}\n\n').encode()


def token_chunk() -> bytes:
    """Return one token event in chunked framing, stamped with the time now."""
    stamp = b"%.6f" % time.monotonic()
    size = _TOKEN_FIXED_LENGTH + len(stamp)
    return b"%x\r\n%s%s%s\r\n" % (size, _TOKEN_HEAD, stamp, _TOKEN_TAIL)


def closing_chunks(count: int) -> bytes:
    usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}
    usage_event = f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
    return (
        chunk(event("{}", "stop")) + chunk(usage_event) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    )


def json_response(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return head.encode() + b"\r\n\r\n" + data


class PacedStream:
    """A stream whose tokens go out on a fixed schedule, sent by the `TokenClock`."""

    def __init__(self, protocol: BackendProtocol, count: int, interval: float) -> None:
        self.protocol = protocol
        self.count = count
        self.interval = interval
        self.sent = 0
        self.start = time.monotonic()

    @property
    def next_due(self) -> float:
        return self.start + self.sent * self.interval

    def send_token(self) -> bool:
        """Send the next token, and the end of the stream after the last; return True if more."""
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            self.protocol.stream_ended()
            return False
        transport.write(token_chunk())
        self.sent += 1
        if self.sent < self.count:
            return True
        transport.write(closing_chunks(self.count))
        self.protocol.stream_ended()
        return False


class TokenClock:
    """One timer per tick for all paced streams whose next token is due in that tick."""

    def __init__(self) -> None:
        self.due: dict[int, list[PacedStream]] = {}

    def schedule(self, stream: PacedStream) -> None:
        tick = math.ceil(stream.next_due / TICK)
        waiting = self.due.get(tick)
        if waiting is None:
            waiting = self.due[tick] = []
            # The event loop's clock is time.monotonic(), the clock of the stamps.
            asyncio.get_running_loop().call_at(tick * TICK, self._send_due, tick)
        waiting.append(stream)

    def _send_due(self, tick: int) -> None:
        for stream in self.due.pop(tick):
            if stream.send_token():
                self.schedule(stream)


class BackendProtocol(asyncio.Protocol):
    """One keep-alive connection: reads requests one at a time and responds to each."""

    def __init__(self, settings: argparse.Namespace, counter: StreamCounter, clock: TokenClock):
        self.settings = settings
        self.counter = counter
        self.clock = clock
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.streaming:
            self.stream_ended()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.streaming and self._respond_to_next_request():
            pass

    def stream_ended(self) -> None:
        if not self.streaming:
            return
        self.streaming = False
        self.counter.leave()
        # A request that arrived while the stream ran gets its response now.
        while self.transport is not None and not self.streaming and self._respond_to_next_request():
            pass

    def _respond_to_next_request(self) -> bool:
        """Respond to the first complete request buffered; return False if there is none."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return False
        body = json.loads(bytes(self.buffer[end + 4 : end + 4 + length])) if length else {}
        del self.buffer[: end + 4 + length]
        method, path, _ = request_line.split(" ", 2)
        self._respond(method, path, body)
        return True

    def _respond(self, method: str, path: str, body: dict[str, object]) -> None:
        assert self.transport is not None
        settings = self.settings
        if (method, path) == ("GET", "/v1/models"):
            listing = {"object": "list", "data": [{"id": settings.model, "object": "model"}]}
            self.transport.write(json_response(200, listing))
        elif (method, path) == ("GET", "/stats"):
            stats = {"open": self.counter.open, "peak": self.counter.peak}
            self.transport.write(json_response(200, stats))
        elif (method, path) == ("POST", "/v1/chat/completions"):
            count = int(body.get("max_tokens") or settings.tokens)  # type: ignore[call-overload]
            self._start_stream(count, settings.token_interval)
        else:
            self.transport.write(json_response(404, {"error": {"message": f"no route {path}"}}))

    def _start_stream(self, count: int, interval: float) -> None:
        assert self.transport is not None
        self.transport.write(_HEAD + chunk(event('{"role":"assistant","content":""}', None)))
        self.streaming = True
        self.counter.enter()
        stream = PacedStream(self, count, interval)
        if interval > 0:
            # The first token goes out at once, the later ones from the clock.
            if stream.send_token():
                self.clock.schedule(stream)
            return
        # Unpaced: every token in its own write, as fast as the loop allows.
        while stream.send_token():
            pass


async def serve(settings: argparse.Namespace) -> None:
    counter = StreamCounter()
    clock = TokenClock()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BackendProtocol(settings, counter, clock), "127.0.0.1", settings.port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-model", help="the one model it lists")
    parser.add_argument("--tokens", type=int, default=8, help="tokens when max_tokens is unset")
    parser.add_argument("--token-interval", type=float, default=0.0, help="seconds per token")
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
