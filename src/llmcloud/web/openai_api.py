"""OpenAI's chat completions and models API under /v1, for scripts and tools with an API key.

Clients authenticate with `Authorization: Bearer llmc_...`, a key from the
API keys page (`llmcloud.auth.api_keys`). A missing, unknown or revoked key
gets 401, and a key of a pending or deactivated account gets 403. Session
cookies count for nothing here, so these routes need no CSRF check. Chats
go through the same gateway as the chat pages, with its queues and its
limit of waiting requests per model, and every message other than an
answer is held to the chat page's prompt limit (`web_max_prompt_length`).

Requests are validated as OpenAI's API does, and every error has its body
shape, `{"error": {"message", "type", "param", "code"}}`, unknown paths and
methods under /v1 included. Streaming and the response bodies are in
`llmcloud.web.openai_reply`.

`OpenAIAPI` serves these routes in front of the web app's middleware and
router (see `llmcloud.web.app.WebApp`), in one layer that does for /v1
what that middleware does for the pages: it adds the security headers,
counts and times the request in the metrics, writes its access log line,
and logs an unexpected error once and answers it with a 500. FastAPI's
router and Starlette's middleware stack took about 40% (an estimate from
two measurements) of the web app's time between a chat request's arrival
and the backend request's departure (docs/benchmarks.md, "Gateway: where
the time goes").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmcloud.auth import api_keys
from llmcloud.auth.errors import AccountDeactivated, AccountPending, ServiceError
from llmcloud.db.database import Database
from llmcloud.db.models import User
from llmcloud.gateway import (
    ChatRequest,
    GatewayError,
    InvalidChatRequest,
    UnknownModel,
    check_model_name,
)
from llmcloud.monitoring.http_metrics import record_request
from llmcloud.monitoring.metrics import api_key_requests
from llmcloud.openai_fields import NullMeansDefault
from llmcloud.text import json_type_name, may_have_surrogate, number_too_long, surrogate_problem
from llmcloud.tls.asgi import BODY_SEND
from llmcloud.web.deps import WebState, web_state
from llmcloud.web.middleware import add_security_headers, log_access
from llmcloud.web.openai_reply import (
    CompletionResponse,
    error_response,
    gateway_error_response,
)

log = logging.getLogger("llmcloud.web")

# NOTE: a fixed limit, the same as the engine's default engine_max_body_bytes; the web app
# has no setting of its own for it.
MAX_BODY_BYTES = 8 * 1024 * 1024
PREFIX = "/v1"
# The maximum length of a value, written as JSON, that an error message quotes.
MAX_QUOTED_VALUE = 40
ENDPOINTS = {"/v1/chat/completions": "POST", "/v1/models": "GET"}
_OK_REQUESTS = api_key_requests.labels("ok")
_INVALID_KEY_REQUESTS = api_key_requests.labels("invalid_key")
# The scope key of a function that OpenAIAPI calls after the response.
AFTER_RESPONSE = "llmcloud.after_response"
# Database checks of API keys in progress, by database and Authorization header.
_key_checks: dict[tuple[int, str | None], asyncio.Future[User]] = {}


class InvalidRequest(ServiceError):
    """A request body that OpenAI's API would reject; `param` names the field."""

    status_code = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PayloadTooLarge(ServiceError):
    status_code = 413


class _Body(BaseModel):
    # Unknown fields are ignored, as the engine's /v1 does, so that clients that send newer
    # fields still work; every known field is type- and range-checked.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _NullableFields(_Body, NullMeansDefault):
    """A body of OpenAI's API, whose optional fields take null as absent."""


class ContentPart(_Body):
    """A part of a message's content, which check_content accepts if it is text or a refusal.

    `text` and `refusal` are typed as optional so that check_content can tell a
    null value from a missing one, and name the part's index in either error.
    """

    type: StrictStr
    text: StrictStr | None = None
    refusal: StrictStr | None = None

    def text_field(self) -> str:
        """Return the name of the field that carries this part's text."""
        return "refusal" if self.type == "refusal" else "text"


_CONTENT_PARTS = TypeAdapter(list[ContentPart])


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parse_parts(cls, content: Any) -> Any:
        # Parsed here rather than as the union's list member, so that an error in a part is
        # reported under the part's own path, without an error for the string member too.
        if isinstance(content, list):
            return _CONTENT_PARTS.validate_python(content)
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(getattr(part, part.text_field()) or "" for part in self.content)


class StreamOptions(_NullableFields):
    include_usage: StrictBool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(_NullableFields):
    """The fields of OpenAI's chat completions request that the gateway can honour."""

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = Field(None, max_length=4)
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    # The engine's bound on num_predict, so that a larger value is rejected here, naming this
    # field, rather than by the engine, naming its own.
    max_tokens: StrictInt | None = Field(None, ge=1, le=10_000_000)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=10_000_000)
    n: StrictInt = Field(1, ge=1, le=1)
    user: StrictStr | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: StrictBool | None = None


Endpoint = Callable[[Request], Awaitable[ASGIApp]]


@dataclass(frozen=True, slots=True)
class Route:
    """A /v1 route: its methods and path template, which the metrics use as their label."""

    methods: tuple[str, ...]
    path: str
    endpoint: Endpoint


class OpenAIAPI:
    """Serve a /v1 request, with the security headers, metrics, access log and error handling."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0

        async def send_start(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                add_security_headers(message)
            await send(message)

        # Streamed body messages skip this layer, which needs only the start.
        scope.setdefault(BODY_SEND, send)
        route = match_route(scope["method"], scope["path"])
        scope["route"] = route
        try:
            await _respond(route, scope, receive, send_start)
        except ClientDisconnect:
            pass  # The client left while it sent the body; status 0 records that.
        except Exception as exc:
            if status == 0:
                await _unexpected_error(scope, exc)(scope, receive, send_start)
            else:
                # The status went out with the headers, so the client sees the body cut short.
                _log_unexpected_error(scope, exc)
        except BaseException:
            status = status or 500
            raise
        finally:
            record_request("web", scope, status, time.perf_counter() - started)
            log_access(scope, status, started)
            after = scope.get(AFTER_RESPONSE)
            if after is not None:
                after()


async def _respond(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive, send)
    reply: ASGIApp
    try:
        reply = await route.endpoint(request)
    except ServiceError as exc:
        log.info("%s %s rejected: %s", request.method, scope["path"], exc.message)
        reply = _service_error(exc)
    except GatewayError as exc:
        log.info("%s %s rejected: %s", request.method, scope["path"], exc.message)
        reply = gateway_error_response(exc)
    await reply(scope, receive, send)


def _unexpected_error(scope: Scope, exc: Exception) -> JSONResponse:
    request_id = _log_unexpected_error(scope, exc)
    message = f"internal error (request id {request_id}); the server log has the details"
    return error_response(500, message)


def _log_unexpected_error(scope: Scope, exc: Exception) -> str:
    request_id = uuid.uuid4().hex[:12]
    log.error(
        "%s %s failed, request id %s", scope["method"], scope["path"], request_id, exc_info=exc
    )
    return request_id


async def list_models(request: Request) -> JSONResponse:
    state = web_state(request)
    await authenticate(request, state)
    models = await state.models.models()
    return JSONResponse({"object": "list", "data": [model_object(m.name) for m in models]})


async def get_model(request: Request) -> JSONResponse:
    state = web_state(request)
    await authenticate(request, state)
    model = request.scope["path"].removeprefix(MODEL_PREFIX)
    names = [info.name for info in await state.models.models()]
    if model not in names:
        raise UnknownModel(model, names)
    return JSONResponse(model_object(model))


async def chat_completions(request: Request) -> CompletionResponse:
    state = web_state(request)
    await authenticate(request, state)
    body = parse_chat_request(await read_body(request))
    check_unsupported(body)
    messages = gateway_messages(body, state.settings.web_max_prompt_length)
    try:
        check_model_name(body.model)
    except InvalidChatRequest as exc:
        raise InvalidRequest(exc.message, param="model") from None
    # The body's checks above are within the gateway's, which it therefore skips.
    chat = ChatRequest(body.model, messages, gateway_options(body))
    events = state.models.chat_request(chat)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return CompletionResponse(events, body.model, stream=body.stream, include_usage=include_usage)


async def unknown_endpoint(request: Request) -> JSONResponse:
    path = request.scope["path"]
    allowed = ENDPOINTS.get(path)
    if allowed is None and _names_model(path):
        allowed = "GET"
    if allowed is not None:
        message = f"method {request.method} is not allowed on {path}; use {allowed}"
        return error_response(405, message, headers={"Allow": allowed})
    served = ", ".join(f"{verb} {endpoint}" for endpoint, verb in ENDPOINTS.items())
    message = (
        f"unknown endpoint {request.method} {path}; this API serves {served}, "
        "GET /v1/models/{model}"
    )
    return error_response(404, message, code="unknown_url")


MODEL_PREFIX = "/v1/models/"
CHAT = Route(("POST",), "/v1/chat/completions", chat_completions)
MODELS = Route(("GET",), "/v1/models", list_models)
MODEL = Route(("GET",), MODEL_PREFIX + "{model:path}", get_model)
# Unknown paths and methods: OpenAI's 404 or 405, before any key check, so they reveal nothing.
UNKNOWN = Route(("GET", "POST", "PUT", "PATCH", "DELETE"), "/v1/{path:path}", unknown_endpoint)
ROUTES = (CHAT, MODELS, MODEL, UNKNOWN)


def is_api_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def match_route(method: str, path: str) -> Route:
    if path == CHAT.path:
        return CHAT if method == "POST" else UNKNOWN
    if method != "GET":
        return UNKNOWN
    if path == MODELS.path:
        return MODELS
    if _names_model(path):
        return MODEL
    return UNKNOWN


def _names_model(path: str) -> bool:
    return path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX)


async def authenticate(request: Request, state: WebState) -> User:
    """Return the account of the request's API key; raises Unauthorized or Forbidden.

    A key found in the in-process cache is checked on the event loop; any
    other goes to the database on a worker thread. When the cache marks a key
    as due for another check, that check starts after the response, so that
    its thread does not take the GIL from the request.
    """
    header = request.headers.get("authorization")
    cached = api_keys.cached_bearer_account(state.db, header)
    if cached is None:
        try:
            user = await _check_in_database(state.db, header)
        except ServiceError:
            _INVALID_KEY_REQUESTS.inc()
            raise
    else:
        user = cached.user
        if cached.check_due:
            request.scope[AFTER_RESPONSE] = functools.partial(_renew_key, state.db, header)
    _OK_REQUESTS.inc()
    return user


async def _check_in_database(db: Database, header: str | None) -> User:
    """Check a key in the database on a worker thread, once for all requests that wait on it.

    When a key's cache entry expires while many of its requests arrive, each
    would otherwise take a worker thread for the same query.
    """
    check = _key_checks.get((id(db), header)) or _start_check(db, header, renew=False)
    # A request that is cancelled while it waits leaves the check running for the others.
    return await asyncio.shield(check)


def _renew_key(db: Database, header: str | None) -> None:
    """Check a cached key again in the background, unless a check of it is under way."""
    if (id(db), header) not in _key_checks:
        _start_check(db, header, renew=True).add_done_callback(_log_renewal_error)


def _start_check(db: Database, header: str | None, *, renew: bool) -> asyncio.Future[User]:
    check_id = (id(db), header)
    check = asyncio.ensure_future(
        run_in_threadpool(api_keys.authenticate_bearer, db, header, renew=renew)
    )
    _key_checks[check_id] = check
    check.add_done_callback(lambda done: _forget_check(check_id, done))
    return check


def _forget_check(check_id: tuple[int, str | None], check: asyncio.Future[User]) -> None:
    del _key_checks[check_id]
    if not check.cancelled():
        check.exception()  # Retrieved here, so a check whose waiters all left logs nothing.


def _log_renewal_error(check: asyncio.Future[User]) -> None:
    # A key that no longer works was logged by the check itself and left the cache.
    error = None if check.cancelled() else check.exception()
    if error is not None and not isinstance(error, ServiceError):
        log.warning("checking a cached API key again failed: %s", error, exc_info=error)


async def read_body(request: Request) -> dict[str, Any]:
    """Read the request body as a JSON object, within MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the limit of {MAX_BODY_BYTES} bytes"
        )
    body = bytearray()
    receive = request.receive
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body is over the limit of {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")

    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is not valid JSON: it is nested too deeply") from None
    except ValueError:
        # Python's limit on the digits of an integer (4,300 by default) raises ValueError.
        raise InvalidRequest(number_too_long("request body")) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {json_type_name(data)}")
    if may_have_surrogate(body):
        problem = surrogate_problem(data)
        if problem is not None:
            raise InvalidRequest(problem[1], param=problem[0])
    return data


def parse_chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        # A field of several types gets an error per type, under names like content.str.
        # Their messages are joined under the field's own name.
        messages: dict[str, list[str]] = {}
        values: dict[str, str] = {}
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"] if not _is_type_tag(part))
            messages.setdefault(field, []).append(error["msg"])
            if error["type"] not in _UNQUOTED_ERRORS:
                values[field] = describe_value(error["input"])
        problems = [
            _describe_problem(field, texts, values.get(field))
            for field, texts in list(messages.items())[:5]
        ]
        first = next(iter(messages), None)
        raise InvalidRequest("invalid request: " + "; ".join(problems), param=first) from None


# Errors whose input is not the field's value (a missing field's input is the object that
# lacks it), or whose message already gives the value's size.
_UNQUOTED_ERRORS = frozenset({"missing", "too_short", "too_long"})


def _describe_problem(field: str, texts: list[str], value: str | None) -> str:
    text = " or ".join(_lower_first(text) if index else text for index, text in enumerate(texts))
    if value is None:
        return f"{field}: {text}"
    return f"{field}: {text}, not {value}"


def describe_value(value: Any) -> str:
    """Describe a parsed JSON value for an error message: short scalars as JSON, others by size.

    Strings longer than a few words are described by their length only, because
    the message is logged and a string can be part of a prompt.
    """
    if isinstance(value, list):
        return f"an array of {len(value)} items" if value else "an empty array"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > MAX_QUOTED_VALUE:
        return f"a {json_type_name(value)} of {len(text)} characters"
    return text


def _is_type_tag(part: str | int) -> bool:
    # Field names are snake_case words; the types of a union are named like str,
    # list[str] or ContentPart.
    return isinstance(part, str) and ("[" in part or part in ("str", "ContentPart"))


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def check_unsupported(body: ChatCompletionRequest) -> None:
    """Reject the fields that the gateway cannot honour, rather than ignoring them."""
    if body.tools:
        raise InvalidRequest(
            "tools are not supported by this API; send the request without tools", param="tools"
        )
    if body.response_format is not None and body.response_format.type != "text":
        raise InvalidRequest(
            f"response_format type {body.response_format.type!r} is not supported by this API; "
            "only 'text' is",
            param="response_format",
        )
    if body.logprobs:
        raise InvalidRequest("logprobs are not supported by this API", param="logprobs")


def gateway_messages(body: ChatCompletionRequest, max_length: int) -> list[dict[str, str]]:
    """Return the messages as the gateway takes them; "developer" becomes "system"."""
    messages = []
    for index, message in enumerate(body.messages):
        check_content(message, index)
        text = message.text()
        if message.role != "assistant" and len(text) > max_length:
            raise InvalidRequest(
                f"messages.{index}.content has {len(text)} characters; the limit is {max_length} "
                "(setting web_max_prompt_length). Shorten the message",
                param=f"messages.{index}.content",
            )
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": text})
    return messages


def check_content(message: ChatMessage, index: int) -> None:
    """Reject missing text outside assistant messages, and parts other than text or refusal."""
    if message.content is None and message.role != "assistant":
        raise InvalidRequest(
            f"messages.{index}.content is missing; a {message.role} message needs its text",
            param=f"messages.{index}.content",
        )
    if message.content == []:
        raise InvalidRequest(
            f"messages.{index}.content is an empty list; send at least one text part, "
            "or the text as a string",
            param=f"messages.{index}.content",
        )
    for part_index, part in enumerate(message.content or []):
        if isinstance(part, ContentPart):
            check_part(part, message.role, f"messages.{index}.content.{part_index}")


def check_part(part: ContentPart, role: str, where: str) -> None:
    """Reject a part of a type that `role` cannot have, or without its text as a string."""
    supported = part_types(role)
    if part.type not in supported:
        names = " or ".join(repr(name) for name in supported)
        raise InvalidRequest(
            f"{where} has type {part.type!r}, which this API does not support in {role} "
            f"messages; send parts of type {names}",
            param=where,
        )
    field = part.text_field()
    if getattr(part, field) is not None:
        return
    if field in part.model_fields_set:
        message = f"{where}.{field} must be a string, not null"
    else:
        message = f"{where}.{field} is missing; a {part.type!r} part needs its text"
    raise InvalidRequest(message, param=f"{where}.{field}")


def part_types(role: str) -> tuple[str, ...]:
    """Return the content part types that a message of `role` can have."""
    # OpenAI's assistant messages also take a refusal part, which contains the model's refusal.
    return ("text", "refusal") if role == "assistant" else ("text",)


def gateway_options(body: ChatCompletionRequest) -> dict[str, Any]:
    """Map OpenAI's sampling fields to the Ollama options that the gateway takes."""
    options: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            options[name] = value
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        options["num_predict"] = limit
    return options


def model_object(name: str) -> dict[str, Any]:
    # The gateway does not know when a model was made, so `created` is 0.
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmcloud"}


def _service_error(exc: ServiceError) -> JSONResponse:
    param = exc.param if isinstance(exc, InvalidRequest) else None
    code: str | None = None
    headers: dict[str, str] | None = None
    if exc.status_code == 401:
        code = "invalid_api_key"
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, AccountPending):
        code = "account_pending"
    elif isinstance(exc, AccountDeactivated):
        code = "account_deactivated"
    return error_response(exc.status_code, exc.message, param=param, code=code, headers=headers)
