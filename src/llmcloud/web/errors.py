"""Turning errors into responses: a page for browsers, text for htmx, JSON for API clients.

Domain errors carry their HTTP status (`llmcloud.db.errors.ServiceError`,
`llmcloud.gateway.GatewayError`). A page request without a valid session is
redirected to the log-in page, and one from a pending account to the
waiting page. Every other error keeps its status and shows its message.
Validation errors name the fields. A database on a full disk is answered with
507 and a message for the admin, and a read-only database (`DatabaseReadOnly`)
with 503 and a message for the operator. Anything unexpected is caught by
`UnexpectedErrorMiddleware`, logged once with its traceback, route and a
request id, and gets a 500 response that shows only that id. The error is not
re-raised, so the server does not log it a second time.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmcloud.auth.errors import AccountPending, ServiceError, Unauthorized
from llmcloud.db.errors import DatabaseReadOnly
from llmcloud.gateway import GatewayError, ServiceUnavailable
from llmcloud.web.templating import render

log = logging.getLogger("llmcloud.web")

JSON_PREFIXES = ("/api/", "/v1/")
STORAGE_FULL_MESSAGE = (
    "the server's storage is full, so nothing was saved; "
    "an admin must free space in the data dir or the database"
)
# SQLite's SQLITE_FULL message, and PostgreSQL's SQLSTATE 53100 (disk_full).
_SQLITE_FULL_TEXT = "database or disk is full"
_POSTGRES_DISK_FULL = "53100"


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(DatabaseReadOnly, _database_read_only)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_error)


def error_response(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """Return the error message as the client reads it: JSON, plain text for htmx, or a page."""
    if wants_json(request):
        return JSONResponse({"error": message}, status_code, headers=headers)
    if request.headers.get("hx-request"):
        return PlainTextResponse(message, status_code, headers=headers)
    response = render(
        request,
        "error.html",
        {"status_code": status_code, "message": message},
        status_code=status_code,
    )
    response.headers.update(headers or {})
    return response


def wants_json(request: Request) -> bool:
    if request.url.path.startswith(JSON_PREFIXES):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if _is_page_request(request):
        if isinstance(exc, AccountPending):
            return RedirectResponse("/pending", 303)
        if isinstance(exc, Unauthorized):
            return RedirectResponse(f"/login?next={quote(_return_path(request))}", 303)
    if exc.status_code >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(request, exc.status_code, exc.message)


async def _database_read_only(request: Request, exc: Exception) -> Response:
    # llmcloud.db.read_only logged the database and the driver's message when it raised this.
    assert isinstance(exc, DatabaseReadOnly)
    return error_response(request, exc.status_code, exc.message)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    headers = None
    if isinstance(exc, ServiceUnavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    return error_response(request, exc.status_code, exc.message, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"][1:]) or "request"
        problems.append(f"{location}: {error['msg']}")
    return error_response(request, 422, "invalid request: " + "; ".join(problems))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"page {request.url.path} not found"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request, exc.status_code, message, dict(exc.headers or {}))


async def _database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperationalError)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if _SQLITE_FULL_TEXT in str(exc.orig) or sqlstate == _POSTGRES_DISK_FULL:
        return _storage_full(request, exc)
    return await _unexpected_error(request, exc)


def _storage_full(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed, storage full: %s", request.method, request.url.path, exc)
    return error_response(request, 507, STORAGE_FULL_MESSAGE)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    request_id = uuid.uuid4().hex[:12]
    route = getattr(request.scope.get("route"), "path", request.url.path)
    log.error(
        "%s %s (route %s) failed, request id %s",
        request.method,
        request.url.path,
        route,
        request_id,
        exc_info=exc,
    )
    message = f"internal error (request id {request_id}); the server log has the details"
    return error_response(request, 500, message)


class UnexpectedErrorMiddleware:
    """Log an exception that no handler took, once, and send a 500 response for it.

    Starlette's handler for `Exception` runs in its outermost middleware and then
    re-raises, so uvicorn would log the same error a second time. This middleware sits
    inside the access log and metrics middleware, so they record the 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request = Request(scope)
            response = await _unexpected_error(request, exc)
            # NOTE: once the headers are sent, the status cannot change, so the client sees
            # the response cut short; the error is still logged once above.
            if not response_started:
                await response(scope, receive, send)


def _is_page_request(request: Request) -> bool:
    return not wants_json(request) and not request.headers.get("hx-request")


def _return_path(request: Request) -> str:
    """The page to return to after logging in: the current one for GET, else the chat list."""
    if request.method == "GET":
        return request.url.path
    return "/chats"
