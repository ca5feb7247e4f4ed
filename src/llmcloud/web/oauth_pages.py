"""Log-in through GitHub and OpenID Connect providers, and the admin page of identities.

`/auth/NAME/login` sends the browser to the provider with a signed cookie
that carries the log-in's state. `/auth/NAME/callback` checks the state
against that cookie, exchanges the code and logs the account in. Every
failure ends on an error page with a retry link and the failure's status
(400, 401, 403 or 502), creates no account and no session, and is stored as
an audit event with its reason code. See `llmcloud.auth.oauth` for the flow.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmcloud.auth import audit
from llmcloud.auth.accounts import check_can_log_in, get_account
from llmcloud.auth.errors import AccountDeactivated, AccountPending, ServiceError
from llmcloud.auth.identities import (
    IdentityPolicy,
    SignInResult,
    list_identities,
    sign_in_with_identity,
    unlink_identity,
)
from llmcloud.auth.login_errors import LoginFailed
from llmcloud.auth.oauth import check_callback, finish_login
from llmcloud.auth.oauth import start_login as start_authorization
from llmcloud.auth.pending_logins import PENDING_LOGIN_SECONDS, PendingLogins, pending_logins_for
from llmcloud.auth.providers import configured_providers, find_provider
from llmcloud.db.errors import DatabaseReadOnly
from llmcloud.db.models import Outcome
from llmcloud.monitoring.metrics import logins
from llmcloud.web.auth_pages import HOME, logged_in_response, pending_response, safe_next
from llmcloud.web.deps import AccountId, AdminUser, CsrfChecked, IdentityId, State, web_state
from llmcloud.web.security import is_https
from llmcloud.web.templating import render

router = APIRouter()

STATE_COOKIE = "llmcloud_oauth"
_pending_lock = threading.Lock()


@router.get("/auth/{name}/login")
def start_login(request: Request, state: State, name: str, next: str = HOME) -> Response:
    try:
        provider = find_provider(state.settings, name)
        authorization = start_authorization(
            state.settings, provider, pending_logins(request), safe_next(next)
        )
    except ServiceError as exc:
        return _failed(request, state, name, exc)

    response = RedirectResponse(authorization.url, 303)
    response.set_cookie(
        STATE_COOKIE,
        state.signer.sign(authorization.state, STATE_COOKIE),
        max_age=PENDING_LOGIN_SECONDS,
        httponly=True,
        samesite="lax",
        secure=is_https(request, state.settings),
        path="/auth/",
    )
    return response


@router.get("/auth/{name}/callback")
def callback(request: Request, state: State, name: str) -> Response:
    subject = None
    try:
        provider = find_provider(state.settings, name)
        cookie_state = state.signer.unsign(request.cookies.get(STATE_COOKIE), STATE_COOKIE)
        params = dict(request.query_params)
        login, code = check_callback(params, cookie_state, pending_logins(request), name)
        profile = finish_login(state.settings, provider, login, code)
        subject = profile.subject
        policy = IdentityPolicy.from_settings(state.settings, name)
        result = sign_in_with_identity(state.db, profile, policy)
        user = result.user
        _audit_sign_in(state, name, result, subject)
        check_can_log_in(user)
    except AccountPending:
        _audit_failure(state, name, "pending", subject, user.id)
        return _clear_state_cookie(pending_response(request, state, user))
    except DatabaseReadOnly:
        # The audit event of the failure could not be written either.
        raise
    except ServiceError as exc:
        return _failed(request, state, name, exc, subject)

    audit.record_event(
        state.db, audit.LOGIN, Outcome.SUCCESS, provider=name, user_id=user.id, subject=subject
    )
    logins.labels(name, "success").inc()
    return _clear_state_cookie(logged_in_response(request, state, user, login.next_path))


@router.get("/admin/users/{user_id}/identities", response_class=HTMLResponse)
def identities_page(
    request: Request, state: State, admin: AdminUser, user_id: AccountId
) -> Response:
    account = get_account(state.db, user_id)
    identities = list_identities(state.db, user_id)
    context = {"account": account, "identities": identities}
    return render(request, "admin/identities.html", context)


@router.post("/admin/users/{user_id}/identities/{identity_id}/unlink", dependencies=[CsrfChecked])
def unlink(
    request: Request, state: State, admin: AdminUser, user_id: AccountId, identity_id: IdentityId
) -> Response:
    try:
        identity = unlink_identity(state.db, user_id, identity_id)
    except ServiceError as exc:
        audit.record_event(
            state.db,
            audit.UNLINK,
            Outcome.FAILURE,
            user_id=admin.user.id,
            reason=type(exc).__name__.lower(),
        )
        raise
    audit.record_event(
        state.db,
        audit.UNLINK,
        Outcome.SUCCESS,
        provider=identity.provider,
        user_id=admin.user.id,
        subject=identity.subject,
        reason=f"account_{user_id}",
    )
    return RedirectResponse(f"/admin/users/{user_id}/identities", 303)


def pending_logins(request: Request) -> PendingLogins:
    """Return the app's store of log-ins waiting for their callback."""
    with _pending_lock:
        store: PendingLogins | None = getattr(request.app.state, "oauth_pending", None)
        if store is None:
            redis_url = web_state(request).settings.redis_url
            store = pending_logins_for(redis_url.get_secret_value() if redis_url else None)
            request.app.state.oauth_pending = store
        return store


def _failed(
    request: Request, state: State, name: str, exc: ServiceError, subject: str | None = None
) -> Response:
    reason = exc.reason if isinstance(exc, LoginFailed) else _reason_of(exc)
    _audit_failure(state, name, reason, subject)
    context = {
        "status_code": exc.status_code,
        "message": exc.message,
        # Only a failed log-in is worth retrying; an unknown provider is not.
        "retry_url": f"/auth/{name}/login" if isinstance(exc, LoginFailed) else "/login",
        "reason": reason,
    }
    response = render(request, "login_error.html", context, status_code=exc.status_code)
    return _clear_state_cookie(response)


def _audit_sign_in(state: State, name: str, result: SignInResult, subject: str) -> None:
    """Record the link and the role change that a provider log-in caused, if any."""
    if result.linked:
        audit.record_event(
            state.db,
            audit.LINK,
            Outcome.SUCCESS,
            provider=name,
            user_id=result.user.id,
            subject=subject,
        )
    change = result.role_change
    if change is not None:
        audit.record_event(
            state.db,
            audit.ROLE_CHANGE,
            Outcome.SUCCESS if change.applied else Outcome.FAILURE,
            provider=name,
            user_id=result.user.id,
            reason=change.reason,
            subject=subject,
        )


def _audit_failure(
    state: State, name: str, reason: str, subject: str | None, user_id: int | None = None
) -> None:
    # The name comes from the URL, so only a configured provider's name becomes a label value.
    known = any(provider.name == name for provider in configured_providers(state.settings))
    logins.labels(name if known else "unknown", "failure").inc()
    audit.record_event(
        state.db,
        audit.LOGIN,
        Outcome.FAILURE,
        provider=name[:32],
        user_id=user_id,
        reason=reason,
        subject=subject,
    )


def _reason_of(exc: ServiceError) -> str:
    if isinstance(exc, AccountDeactivated):
        return "deactivated"
    return type(exc).__name__.lower()[:64]


def _clear_state_cookie(response: Response) -> Response:
    response.delete_cookie(STATE_COOKIE, path="/auth/")
    return response
