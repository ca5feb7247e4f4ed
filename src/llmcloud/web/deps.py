"""Request dependencies of the web app: its shared state, the logged-in user, roles, CSRF.

Routes declare what they need through the annotated types at the end of
this module:

    @router.get("/chats")
    def chats(request: Request, active: CurrentUser) -> Response: ...

    @router.post("/chats/{chat_id}/delete", dependencies=[CsrfChecked])
    def delete(request: Request, active: CurrentUser, chat_id: str) -> Response: ...

`CurrentUser` raises SessionExpired, AccountPending or AccountDeactivated,
which the error handlers turn into a redirect to the login page or an error
page. `AdminUser` also raises Forbidden for anyone but an admin.
`CsrfChecked` checks the Origin or Referer header and the session's CSRF
token. `SameOriginChecked` checks only the header, for the log-in and
sign-up forms, which have no session yet. `FormBody` rejects a body that is
not form data with 415, where the form's fields would otherwise read as empty.

`AccountId`, `ApiKeyId`, `BackendId` and `IdentityId` type integer path
parameters. An id outside the range of the id column names no row, so it
gets the same NotFound as an unknown id instead of reaching the database,
which fails on a value it cannot bind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from argon2 import PasswordHasher
from fastapi import Depends, Request
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from llmcloud.auth.errors import (
    AccountDeactivated,
    AccountPending,
    Forbidden,
    NotFound,
    SessionExpired,
)
from llmcloud.auth.sessions import ActiveSession, SessionPolicy, check_csrf, lookup_session
from llmcloud.db.database import Database
from llmcloud.db.models import Role
from llmcloud.gateway import Gateway
from llmcloud.settings import Settings
from llmcloud.web.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    CookieSigner,
    check_same_origin,
    session_token,
)

FORM_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The ids of accounts, API keys, backends and identities are INTEGER columns. PostgreSQL
# stores those in 32 bits. SQLite allows 64 bits, but counts the ids of new rows up from 1.
MIN_ROW_ID = -(2**31)
MAX_ROW_ID = 2**31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass
class WebState:
    """State shared by the requests of one app, stored as `app.state.web`."""

    settings: Settings
    signer: CookieSigner
    policy: SessionPolicy
    hasher: PasswordHasher
    database: Database | None = None
    gateway: Gateway | None = None

    @property
    def db(self) -> Database:
        if self.database is None:
            raise RuntimeError("the web app's database is not open; the app has not started")
        return self.database

    @property
    def models(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the web app's gateway is not set; the app has not started")
        return self.gateway


def web_state(connection: HTTPConnection) -> WebState:
    state: WebState = connection.app.state.web
    return state


def current_session(connection: HTTPConnection) -> ActiveSession:
    """Return the session of the request's cookie, caching it on the request.

    Raises SessionExpired for a missing, forged or expired cookie, and
    AccountPending or AccountDeactivated when the account may no longer log in.
    """
    cached: ActiveSession | None = getattr(connection.state, "session", None)
    if cached is not None:
        return cached
    state = web_state(connection)
    token = session_token(connection, state.signer)
    active = lookup_session(state.db, token, policy=state.policy)
    connection.state.session = active
    return active


def optional_session(connection: HTTPConnection) -> ActiveSession | None:
    """Return the request's session, or None for a visitor who is not logged in."""
    try:
        return current_session(connection)
    except (SessionExpired, AccountPending, AccountDeactivated):
        return None


def require_user(request: Request) -> ActiveSession:
    return current_session(request)


def require_admin(request: Request) -> ActiveSession:
    active = current_session(request)
    if active.user.role != Role.ADMIN:
        raise Forbidden("this page is for admins only")
    return active


async def require_csrf(request: Request) -> ActiveSession:
    """Check a state-changing request from a session: its origin and its CSRF token."""
    check_same_origin(request, web_state(request).settings)
    active = current_session(request)
    check_csrf(active, await _submitted_csrf_token(request))
    return active


def require_same_origin(request: Request) -> None:
    check_same_origin(request, web_state(request).settings)


def require_form_body(request: Request) -> None:
    if _has_form_body(request):
        return
    content_type = request.headers.get("content-type", "").split(";")[0].strip() or "none"
    raise HTTPException(
        415,
        f"unsupported content type {content_type!r}; {request.url.path} expects HTML form "
        "data, sent as application/x-www-form-urlencoded or multipart/form-data",
    )


def _has_form_body(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").lower()
    return content_type.startswith(FORM_CONTENT_TYPES)


async def _submitted_csrf_token(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if _has_form_body(request):
        value: Any = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def _row_id_check(not_found: str) -> Callable[[object], object]:
    """Return a check of a path parameter that raises NotFound for an integer out of range.

    The check reads the text before pydantic parses it, because pydantic rejects an integer
    of more than 4,300 digits with a validation error. NotFound is not a ValueError, so
    pydantic lets it through to the error handlers.
    """

    def check(value: object) -> object:
        if not isinstance(value, str) or not _INTEGER.fullmatch(value):
            return value
        sign = -1 if value.startswith("-") else 1
        digits = value.lstrip("+-").lstrip("0") or "0"
        if len(digits) > len(str(MAX_ROW_ID)) or not MIN_ROW_ID <= sign * int(digits) <= MAX_ROW_ID:
            displayed_id = value if len(value) <= 30 else value[:30] + "..."
            raise NotFound(not_found.format(id=displayed_id))
        return value

    return check


CurrentUser = Annotated[ActiveSession, Depends(require_user)]
AdminUser = Annotated[ActiveSession, Depends(require_admin)]
CsrfChecked = Depends(require_csrf)
SameOriginChecked = Depends(require_same_origin)
FormBody = Depends(require_form_body)
State = Annotated[WebState, Depends(web_state)]
# Each message reads like the NotFound that the routes' functions raise for an unknown id.
AccountId = Annotated[int, BeforeValidator(_row_id_check("account {id} not found"))]
ApiKeyId = Annotated[int, BeforeValidator(_row_id_check("API key {id} not found"))]
BackendId = Annotated[
    int,
    BeforeValidator(_row_id_check("backend {id} not found; it may have been removed already")),
]
IdentityId = Annotated[int, BeforeValidator(_row_id_check("identity {id} not found"))]
