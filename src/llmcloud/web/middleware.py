"""ASGI middleware of the web app: security headers, the request size limit, the access log."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmcloud.logs import access_log_path

access_log = logging.getLogger("llmcloud.access")

# Scripts and styles come only from /static, so an injected inline script or
# event-handler attribute does not run even if it passed the HTML sanitiser.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def add_security_headers(start: Message) -> None:
    """Add to an `http.response.start` message the security headers that it does not set."""
    headers = start.get("headers", [])
    names = {name for name, _ in headers}
    extra = [(name, value) for name, value in SECURITY_HEADERS if name not in names]
    start["headers"] = [*headers, *extra]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(message)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimitMiddleware:
    """Returns 413 for a request whose body is larger than `max_bytes`.

    Starlette stores uploaded files on disk without a limit, so the limit is
    enforced here, before any route reads the body. A declared Content-Length
    is checked at once. A chunked body is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, send)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        message = (
            f"request body is larger than {self.max_bytes} bytes, the web app's limit "
            "(setting web_max_import_bytes plus 64 KiB for form framing); send a smaller body"
        )
        path: str = scope.get("path", "")
        if path.startswith("/api/"):
            body = json.dumps({"error": message}).encode()
            content_type = b"application/json"
        else:
            body = message.encode()
            content_type = b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class AccessLogMiddleware:
    """Logs one line per request to `llmcloud.access`: client, method, path, status, duration.

    The query string is left out, because a search query is text the user typed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 0}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "websocket.accept":
                status["code"] = 101
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            log_access(scope, status["code"], started)


# The characters of an IP address or a host name. A client address with others came from an
# X-Forwarded-For header that a trusted proxy passed on as its client sent it.
_PLAIN_ADDRESS = re.compile(r"[0-9A-Za-z.:%_\[\]-]+")


def log_access(scope: Scope, status: int, started: float) -> None:
    """Log a request's line; `started` is its `time.perf_counter()` at arrival."""
    client = scope.get("client") or ("-", 0)
    host = client[0]
    if not _PLAIN_ADDRESS.fullmatch(host):
        # Quoted and escaped, so that a forged value cannot pass for the rest of the line.
        host = repr(host)
    access_log.info(
        '%s "%s %s" %s %.1fms',
        host,
        scope.get("method", "WEBSOCKET"),
        access_log_path(scope["path"]),
        status,
        (time.perf_counter() - started) * 1000,
    )
