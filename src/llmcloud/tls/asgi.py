"""ASGI pieces of HTTPS serving: response headers, and the plain-HTTP redirect port.

`ProxyHeadersMiddleware` adds Strict-Transport-Security when the public URL
is https, and `X-Accel-Buffering: no` to every streaming response (Server-Sent
Events and NDJSON), so that nginx passes each token on at once.

`redirect_app` serves the optional plain-HTTP port: it answers ACME HTTP-01
challenges from the challenge store and sends everything else to HTTPS with
a 301. The redirect target comes from the public URL when one is set, else
from the request's Host header with the HTTPS port put in.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmcloud.tls.challenges import ChallengeStore

HSTS_VALUE = b"max-age=63072000"  # two years
STREAMING_TYPES = (b"text/event-stream", b"application/x-ndjson")
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
BODY_SEND = "llmcloud.body_send"
"""The scope key of the server's own `send`, for an app's streamed body messages.

A layer that reads or changes only a response's start sets it, unless a
layer above it did, so that each body message of a long stream skips the
layers that do nothing with it. A layer that changes body messages must not
let it through.
"""


class ProxyHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self._extra_headers(list(message.get("headers", [])))
            await send(message)

        scope.setdefault(BODY_SEND, send)
        await self.app(scope, receive, send_with_headers)

    def _extra_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        names = {name.lower() for name, _ in headers}
        content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
        streaming = content_type.split(b";")[0].strip() in STREAMING_TYPES
        if streaming and b"x-accel-buffering" not in names:
            headers.append((b"x-accel-buffering", b"no"))
        if self.hsts and b"strict-transport-security" not in names:
            headers.append((b"strict-transport-security", HSTS_VALUE))
        return headers


def redirect_app(data_dir: Path, https_port: int, public_url: str | None) -> ASGIApp:
    """Build the ASGI app of the plain-HTTP port."""
    store = ChallengeStore(data_dir)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(CHALLENGE_PREFIX):
            answer = store.get(path[len(CHALLENGE_PREFIX) :])
            status, body = (200, answer.encode("ascii")) if answer else (404, b"not found\n")
            await _respond(send, status, [(b"content-type", b"text/plain")], body)
            return
        location = _https_location(scope, https_port, public_url)
        await _respond(send, 301, [(b"location", location.encode("latin-1"))], b"")

    return app


def _https_location(scope: Scope, https_port: int, public_url: str | None) -> str:
    target = str(scope["path"])
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    if public_url and public_url.startswith("https://"):
        return public_url + target
    headers = dict(scope.get("headers", []))
    host_header = headers.get(b"host", b"").decode("latin-1")
    host = urlsplit(f"//{host_header}").hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://{host}{port}{target}"


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
