"""A streaming HTTP/1.1 client for the gateway's requests to one backend.

The gateway relays every token of every open chat, so the cost of reading a
response body is paid thousands of times a second. A general client such as
httpx runs each read through several layers of async iterators, a cancel
scope for its timeout and a pure-Python parser. This client is an asyncio
protocol around httptools (llhttp, the parser that uvicorn uses), so one
read from the socket costs one C parser call and at most one wake-up of
the waiting reader.

A `ConnectionPool` keeps the idle keep-alive connections of one backend in a
deque: taking one and giving it back are O(1), however many streams are
open. It has no limit on connections in use, because the gateway's
dispatcher already allows each backend at most `max_parallel` requests.

Only what the backends' APIs need is here: requests with a JSON body or
none, responses with Content-Length, chunked or read-until-close bodies,
keep-alive, TLS, and timeouts for connecting and between two reads.

NOTE: unlike httpx, it ignores HTTP_PROXY, HTTPS_PROXY and ALL_PROXY in the
environment and always connects to the backend directly.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import httptools
import httpx

# Idle connections older than this are closed instead of reused. Servers close idle
# keep-alive connections on their own clock: uvicorn, which serves the llmcloud engine and
# vLLM, does so after 5 s by default. A request sent while the server closes its connection
# fails, so the gateway stops reusing a connection before the server drops it.
MAX_IDLE_SECONDS = 4.0

# A response's unread body above this many bytes pauses reading from its socket until
# the consumer catches up.
_READ_BUFFER_LIMIT = 256 * 1024


class HTTPError(Exception):
    """A transport failure of a request to a backend; the subclass names its kind."""


class ConnectError(HTTPError):
    pass


class ConnectTimeout(HTTPError):
    pass


class ReadTimeout(HTTPError):
    pass


class RemoteProtocolError(HTTPError):
    """The backend broke HTTP/1.1, or closed the connection before the response ended."""


class PoolClosed(HTTPError):
    pass


class Response:
    """A response whose status and headers have arrived; its body is read as it streams.

    Read it with `read_lines()` or `read()`, then `close()` it. A response that
    was read to its end goes back to the pool for reuse; one closed earlier
    closes its connection.
    """

    def __init__(self, connection: _Connection, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self._connection = connection
        self._buffer = bytearray()
        self._error: HTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers_done = False
        self._until_close = False
        self._received = False
        self._closed = False

    async def read_lines(self) -> list[str]:
        """Return the complete lines that have arrived, waiting for at least one.

        Lines end in LF or CRLF, and the ending is removed. An empty list means
        the body ended; its last line counts even without a line ending.
        Raises ReadTimeout after read_timeout seconds without data, and
        RemoteProtocolError when the connection breaks before the body ends.
        """
        buffer = self._buffer
        while True:
            end = buffer.rfind(b"\n")
            if end >= 0:
                text = buffer[:end].decode("utf-8", "replace")
                del buffer[: end + 1]
                self._connection.resume_if_drained(len(buffer))
                break
            if self._error is not None:
                raise self._error
            if self.complete:
                if not buffer:
                    return []
                text = buffer.decode("utf-8", "replace")
                buffer.clear()
                break
            await self._wait()
        lines = text.split("\n")
        if "\r" in text:
            lines = [line.removesuffix("\r") for line in lines]
        return lines

    async def read(self, limit: int) -> bytes:
        """Read the body to its end, or its first `limit` bytes when it is longer.

        Raises the transport error that ended the body early, unless some of it arrived.
        """
        data = bytearray()
        while True:
            # Take the buffer as it fills, so that the read buffer limit never pauses the socket
            # of a body larger than it.
            data += self._buffer
            self._buffer.clear()
            self._connection.resume_if_drained(0)
            if self.complete or len(data) >= limit:
                break
            if self._error is not None:
                if data:
                    break
                raise self._error
            await self._wait()
        return bytes(data[:limit])

    async def drain(self, seconds: float) -> None:
        """Read and discard the rest of the body for up to `seconds`, then close the response.

        A body that ended in time gives its connection back for reuse. Otherwise the
        connection is closed.
        """
        if self.complete:
            self.close()
            return
        try:
            async with asyncio.timeout(seconds):
                while not self.complete and self._error is None:
                    self._buffer.clear()
                    self._connection.resume_if_drained(0)
                    await self._wait()
        except (TimeoutError, HTTPError):
            pass
        self.close()

    def close(self) -> None:
        """Give the connection back to the pool when the body was read to its end; else close it.

        Safe to call more than once.
        """
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self.complete and self._error is None:
            self._connection.release()
        else:
            self._connection.close()

    # Called by the connection.

    def _on_headers(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers
        self._headers_done = True
        no_body = status < 200 or status in (204, 304) or self.method == "HEAD"
        framed = "content-length" in headers or "transfer-encoding" in headers
        self._until_close = not no_body and not framed
        self._wake()

    def _on_complete(self) -> None:
        self.complete = True
        self._wake()

    def _on_lost(self, error: HTTPError) -> None:
        if self.complete or self._error is not None:
            return
        if self._headers_done and self._until_close:
            self.complete = True
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._connection.loop.create_future()
        self._waiter = waiter
        self._connection.watch_reads()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _wait_for_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the backend, carrying one request at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.idle_since = 0.0
        self.closed = False
        self.paused = False
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: dict[str, str] = {}
        self._last_read = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods of asyncio.Transport but do not subclass it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._last_read = now
        self.pool.last_received = now
        if self._parser is None:
            self._fail(RemoteProtocolError("the backend sent data without a request"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"invalid HTTP response from the backend: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_read_timer()
        self.pool.forget(self)
        if self.response is not None:
            reason = f": {exc}" if exc is not None else ""
            self.response._on_lost(
                RemoteProtocolError(f"the backend closed the connection{reason}")
            )

    # httptools callbacks

    def on_message_begin(self) -> None:
        assert self.response is not None
        self.response._received = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        assert self.response is not None
        self.response._on_headers(self._parser.get_status_code(), self._headers)

    def on_body(self, body: bytes) -> None:
        # On the per-token path, so the response's buffer is filled here, without a call.
        response = self.response
        assert response is not None
        response._buffer += body
        if response._waiter is not None:
            response._wake()
        buffer = response._buffer
        # Pause only while a complete line waits for the reader: a line longer than the limit
        # must still arrive whole.
        if len(buffer) > _READ_BUFFER_LIMIT and not self.paused and b"\n" in buffer:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        assert self.response is not None
        if not self._parser.should_keep_alive():
            self.pool.forget(self)
            self.closed = True
        self.response._on_complete()

    # Used by the pool and the response.

    def send(self, request: bytes, method: str, path: str) -> Response:
        assert self.transport is not None
        self.response = Response(self, method, path)
        self._headers = {}
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(request)
        return self.response

    def resume_if_drained(self, buffered: int) -> None:
        if self.paused and buffered <= _READ_BUFFER_LIMIT // 2:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def watch_reads(self) -> None:
        """Arm the read timeout for a reader that starts waiting now.

        One timer serves a whole response: when it fires and data arrived
        since it was armed, it is moved to read_timeout after that data.
        """
        now = self.loop.time()
        if now > self._last_read:
            self._last_read = now
        if self._read_timer is None:
            self._read_timer = self.loop.call_at(
                self._last_read + self.pool.read_timeout, self._check_read_timeout
            )

    def release(self) -> None:
        self._finish_response()
        if self.closed:
            self.close()
        else:
            self.pool.put_back(self)

    def close(self) -> None:
        response = self.response
        self.response = None
        self._parser = None
        self._cancel_read_timer()
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()
        if response is not None:
            response._on_lost(RemoteProtocolError("the gateway closed the connection"))

    def _finish_response(self) -> None:
        self.response = None
        self._parser = None
        self._cancel_read_timer()
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _check_read_timeout(self) -> None:
        self._read_timer = None
        response = self.response
        if response is None or response._waiter is None:
            return
        due = self._last_read + self.pool.read_timeout
        if self.loop.time() < due:
            self._read_timer = self.loop.call_at(due, self._check_read_timeout)
            return
        response._error = ReadTimeout(
            f"no data from the backend within {self.pool.read_timeout:g} s"
        )
        response._wake()

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _fail(self, error: HTTPError) -> None:
        if self.response is not None:
            self.response._on_lost(error)
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class ConnectionPool:
    """The connections to one backend: sends requests and keeps the idle ones for reuse.

    `base_url` is an http or https URL, with an optional path that request
    paths are appended to. `headers` go with every request. `connect_timeout`
    limits each TCP and TLS connect, `read_timeout` any wait for data once a
    request is sent, both in seconds. At most `max_idle` idle connections are
    kept. `last_received` is the event loop time at which any connection of
    the pool last received data, 0.0 before the first.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
        max_idle: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        url = httpx.URL(base_url)
        self.scheme = url.scheme
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.base_path = url.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.last_received = 0.0
        self._ssl = ssl_context if url.scheme == "https" else None
        host_header = url.netloc.decode("ascii")
        lines = [f"Host: {host_header}", "Accept: */*"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        self._header_block = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send a request and return its response once the status and headers have arrived.

        When a reused keep-alive connection closes before any byte of the
        response, the request is sent again on a new connection, once. That is
        how a server's close of an idle connection looks, and such a server has
        not read the request.
        """
        request = self._request_bytes(method, path, body)
        connection = self._take_idle()
        if connection is not None:
            response = connection.send(request, method, path)
            try:
                await response._wait_for_headers()
                return response
            except RemoteProtocolError:
                if response._received:
                    raise
                response.close()
        connection = await self._connect()
        response = connection.send(request, method, path)
        try:
            await response._wait_for_headers()
        except BaseException:
            response.close()
            raise
        return response

    async def aclose(self) -> None:
        """Close every connection, the ones in use included; later requests raise PoolClosed."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)

    # Used by the connections.

    def put_back(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            connection.close()
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    # Internals

    def _take_idle(self) -> _Connection | None:
        """Pop the most recently used idle connection that is still open and fresh."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            fresh = connection.loop.time() - connection.idle_since < MAX_IDLE_SECONDS
            if fresh and not connection.closed:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise PoolClosed("the gateway closed its connections to this backend")
        loop = asyncio.get_running_loop()
        connection = _Connection(self)
        extra: dict[str, Any] = {}
        if self._ssl is not None:
            extra = {"ssl": self._ssl, "server_hostname": self.host}
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: connection, self.host, self.port, **extra
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to {self.host}:{self.port} timed out after {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        # uvloop may call connection_made() only after create_connection() has returned.
        connection.transport = transport
        self._open.add(connection)
        return connection

    def _request_bytes(self, method: str, path: str, body: bytes | None) -> bytes:
        head = f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode("ascii") + self._header_block
        if body is None:
            return head + b"\r\n"
        length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head + length.encode("ascii") + body
