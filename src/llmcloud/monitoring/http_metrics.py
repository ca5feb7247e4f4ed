"""ASGI middleware that counts and times HTTP requests by route template.

The route label is the template of the matched route (`/api/chats/{chat_id}`),
never the raw path. Every path that matches no route shares UNMATCHED_ROUTE,
and methods outside the standard set share `other`, so random requests add
no series.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmcloud.monitoring.metrics import UNMATCHED_ROUTE, http_request_duration, http_requests

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """Return the path template of the route that handled the request, or UNMATCHED_ROUTE."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return UNMATCHED_ROUTE


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class HttpMetricsMiddleware:
    """Counts requests and observes their duration in llmcloud_http_* under the app's name."""

    def __init__(self, app: ASGIApp, app_name: str) -> None:
        self.app = app
        self.app_name = app_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException:
            status = status or 500
            raise
        finally:
            record_request(self.app_name, scope, status, time.perf_counter() - started)


def record_request(app_name: str, scope: Scope, status: int, seconds: float) -> None:
    """Count a request and observe its duration; status 0 means the client left before one."""
    route = route_template(scope)
    method = method_label(scope["method"])
    http_requests.labels(app_name, route, method, str(status)).inc()
    http_request_duration.labels(app_name, route, method).observe(seconds)
