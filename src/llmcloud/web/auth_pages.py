"""Log-in, sign-up, log-out and the waiting-for-approval page."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from llmcloud.auth import audit
from llmcloud.auth.account_stats import count_accounts
from llmcloud.auth.accounts import (
    MAX_USERNAME_LENGTH,
    authenticate,
    find_account,
    get_account,
    sign_up,
)
from llmcloud.auth.errors import (
    AccountDeactivated,
    AccountPending,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    ServiceError,
    SignupClosed,
)
from llmcloud.auth.providers import configured_providers
from llmcloud.auth.sessions import create_session, delete_session
from llmcloud.db.errors import DatabaseReadOnly
from llmcloud.db.models import Outcome, Role, User
from llmcloud.monitoring.metrics import logins
from llmcloud.web.deps import (
    CsrfChecked,
    FormBody,
    SameOriginChecked,
    State,
    optional_session,
)
from llmcloud.web.rate_limit import LoginLimiters, RateLimitExceeded
from llmcloud.web.security import (
    PENDING_COOKIE,
    SESSION_COOKIE,
    pending_account_ref,
    session_token,
    set_pending_cookie,
    set_session_cookie,
)
from llmcloud.web.templating import render

log = logging.getLogger("llmcloud.web")

router = APIRouter()

HOME = "/chats"
_LOCAL_REASONS: dict[type[ServiceError], str] = {
    AccountDeactivated: "deactivated",
    InvalidInput: "invalid_input",
}


@router.get("/")
def home(request: Request, state: State) -> Response:
    if optional_session(request) is not None:
        return RedirectResponse(HOME, 303)
    if count_accounts(state.db) == 0:
        return RedirectResponse("/signup", 303)
    return RedirectResponse("/login", 303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, state: State, next: str = HOME) -> Response:
    if optional_session(request) is not None:
        return RedirectResponse(safe_next(next), 303)
    return render(request, "login.html", _login_context(state, safe_next(next), username=""))


@router.post("/login", dependencies=[SameOriginChecked, FormBody])
async def log_in(
    request: Request,
    state: State,
    username: str = Form(""),
    password: str = Form(""),
    next: str = Form(HOME),
) -> Response:
    context = _login_context(state, safe_next(next), username=username)
    if not state.settings.auth_password_login:
        error = "log-in with a password is switched off on this server; use a login provider"
        return render(request, "login.html", {**context, "error": error}, status_code=403)
    try:
        await count_login_attempt(request, username)
    except RateLimitExceeded as exc:
        logins.labels("local", "rate_limited").inc()
        error = (
            f"too many log-in attempts for this account or from this address; retry in "
            f"{exc.retry_after} s (setting web_login_rate_limit)"
        )
        response = render(request, "login.html", {**context, "error": error}, status_code=429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return await run_in_threadpool(_check_password, request, state, username, password, next)


async def count_login_attempt(request: Request, username: str) -> None:
    """Count a password log-in per account name and per client address; raise past the limit."""
    limiters: LoginLimiters = request.app.state.login_limiters
    await limiters.per_account.hit(f"login:{username.strip().lower()[:MAX_USERNAME_LENGTH]}")
    client = request.client.host if request.client else "unknown"
    await limiters.per_address.hit(f"login-from:{client}")


def _check_password(
    request: Request, state: State, username: str, password: str, next: str
) -> Response:
    context = _login_context(state, safe_next(next), username=username)
    try:
        user = authenticate(state.db, username, password, hasher=state.hasher)
    except AccountPending:
        logins.labels("local", "pending").inc()
        pending = find_account(state.db, username)
        _audit_local_login(state, Outcome.FAILURE, pending, "pending")
        return pending_response(request, state, pending)
    except DatabaseReadOnly:
        # The audit event of the failure could not be written either.
        raise
    except ServiceError as exc:
        invalid = isinstance(exc, InvalidCredentials)
        logins.labels("local", "invalid_credentials" if invalid else "rejected").inc()
        reason = "invalid_credentials" if invalid else _LOCAL_REASONS.get(type(exc), "rejected")
        _audit_local_login(state, Outcome.FAILURE, find_account(state.db, username), reason)
        status = 401 if invalid else exc.status_code
        return render(request, "login.html", {**context, "error": exc.message}, status_code=status)
    logins.labels("local", "success").inc()
    _audit_local_login(state, Outcome.SUCCESS, user, None)
    return logged_in_response(request, state, user, safe_next(next))


@router.get("/signup", response_class=HTMLResponse)
def signup_page(request: Request, state: State) -> Response:
    return render(request, "signup.html", _signup_context(state, username="", email=""))


@router.post("/signup", dependencies=[SameOriginChecked, FormBody])
def sign_up_submit(
    request: Request,
    state: State,
    username: str = Form(""),
    password: str = Form(""),
    password_confirm: str = Form(""),
    email: str = Form(""),
) -> Response:
    context = _signup_context(state, username=username, email=email)
    if password != password_confirm:
        error = "the two passwords differ; type the same password twice"
        return render(request, "signup.html", {**context, "error": error}, status_code=422)
    try:
        user = sign_up(
            state.db,
            username,
            password,
            signup_mode=state.settings.signup_mode,
            email=email or None,
            hasher=state.hasher,
        )
    except ServiceError as exc:
        closed = isinstance(exc, SignupClosed)
        context = {**context, "error": exc.message, "closed": closed or context["closed"]}
        return render(request, "signup.html", context, status_code=exc.status_code)
    if user.role == Role.PENDING:
        return pending_response(request, state, user)
    return logged_in_response(request, state, user, HOME)


@router.post("/logout", dependencies=[CsrfChecked])
def log_out(request: Request, state: State) -> Response:
    token = session_token(request, state.signer)
    if token is not None:
        delete_session(state.db, token)
    log.info("account %s logged out", request.state.session.user.id)
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/pending", response_class=HTMLResponse)
def pending_page(request: Request, state: State) -> Response:
    user = _pending_account(request, state)
    return render(request, "pending.html", {"pending_user": user})


@router.get("/pending/status", response_class=HTMLResponse)
def pending_status(request: Request, state: State) -> Response:
    """Render the status block of the waiting page, which the page reloads every few seconds."""
    user = _pending_account(request, state)
    return render(request, "_pending_status.html", {"pending_user": user})


def safe_next(target: str) -> str:
    """Return `target` when it is a path on this site, else the chat list."""
    if target.startswith("/") and not target.startswith(("//", "/\\")) and len(target) < 2000:
        return target
    return HOME


def logged_in_response(request: Request, state: State, user: User, target: str) -> Response:
    # A log-in replaces the browser's session, so the one it had before must end too.
    previous = session_token(request, state.signer)
    if previous is not None:
        delete_session(state.db, previous)
    new = create_session(
        state.db, user.id, policy=state.policy, user_agent=request.headers.get("user-agent")
    )
    response = RedirectResponse(target, 303)
    set_session_cookie(response, request, state.settings, state.signer, new.token)
    response.delete_cookie(PENDING_COOKIE, path="/")
    return response


def pending_response(request: Request, state: State, user: User | None) -> Response:
    response = RedirectResponse("/pending", 303)
    if user is not None:
        set_pending_cookie(response, request, state.settings, state.signer, user.id, user.username)
    return response


def _pending_account(request: Request, state: State) -> User | None:
    ref = pending_account_ref(request, state.signer)
    if ref is None:
        return None
    user_id, username = ref
    try:
        user = get_account(state.db, user_id)
    except NotFound:
        return None
    return user if user.username == username else None


def _audit_local_login(
    state: State, outcome: Outcome, user: User | None, reason: str | None
) -> None:
    user_id = user.id if user is not None else None
    audit.record_event(
        state.db, audit.LOGIN, outcome, provider="local", user_id=user_id, reason=reason
    )


def _login_context(state: State, next_path: str, *, username: str) -> dict[str, object]:
    return {
        "next": next_path,
        "username": username,
        "providers": configured_providers(state.settings),
        "password_login": state.settings.auth_password_login,
    }


def _signup_context(state: State, *, username: str, email: str) -> dict[str, object]:
    first = count_accounts(state.db) == 0
    mode = state.settings.signup_mode
    return {
        "username": username,
        "email": email,
        "first_account": first,
        "closed": mode == "closed" and not first,
        "needs_approval": mode == "approval" and not first,
    }
