"""Admin pages for accounts (approve, change role, deactivate, delete) and the status page.

Every page needs an admin's session and every action is a POST that must
carry the session's CSRF token. Deleting an account takes two steps: a
confirmation page, then a POST that repeats the account's username. The
rules themselves live in `llmcloud.auth.accounts`, which rejects any change
that would leave no active admin. A rejected action shows the users page
again with the reason and the error's status. Model backends have their own
module, `llmcloud.web.admin_backends`.
"""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from llmcloud import __version__
from llmcloud.auth import accounts
from llmcloud.auth.errors import InvalidInput, NotFound, ServiceError
from llmcloud.db.database import Database
from llmcloud.db.errors import quote_value
from llmcloud.db.models import Role, User
from llmcloud.web.deps import AccountId, AdminUser, CsrfChecked, State, WebState
from llmcloud.web.templating import render

log = logging.getLogger("llmcloud.web")

ROLES = [role.value for role in Role]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Record when the app started, for the uptime on the status page."""
    app.state.started_at = time.time()
    app.state.started_monotonic = time.monotonic()
    yield


router = APIRouter(lifespan=lifespan)


@router.get("/admin")
def admin_home(active: AdminUser) -> Response:
    return RedirectResponse("/admin/status", 303)


@router.get("/admin/status", response_class=HTMLResponse)
async def status_page(request: Request, state: State, active: AdminUser) -> Response:
    users = await run_in_threadpool(accounts.list_accounts, state.db)
    gateway = state.models.status()
    queued, queued_everywhere = await state.models.queue_lengths()
    started_at = getattr(request.app.state, "started_at", None)
    started_monotonic = getattr(request.app.state, "started_monotonic", None)
    uptime = None if started_monotonic is None else time.monotonic() - started_monotonic
    context = {
        "version": __version__,
        "python_version": platform.python_version(),
        "database": state.db.dialect,
        "started_at": None if started_at is None else datetime.fromtimestamp(started_at, UTC),
        "uptime": None if uptime is None else format_duration(uptime),
        "account_counts": count_by_state(users),
        "backends": gateway.backends,
        "queued": queued,
        "queued_everywhere": queued_everywhere,
        "models": await state.models.models(),
    }
    return render(request, "admin/status.html", context)


@router.get("/admin/users", response_class=HTMLResponse)
async def users_page(
    request: Request, state: State, active: AdminUser, role: str | None = None
) -> Response:
    return await _render_users(request, state, role=role)


@router.post("/admin/users/{user_id}/approve", dependencies=[CsrfChecked])
async def approve(
    request: Request, state: State, active: AdminUser, user_id: AccountId, username: str = Form("")
) -> Response:
    return await _act(
        request, state, active.user, (user_id, username), "approved", accounts.approve
    )


@router.post("/admin/users/{user_id}/role", dependencies=[CsrfChecked])
async def change_role(
    request: Request,
    state: State,
    active: AdminUser,
    user_id: AccountId,
    role: str = Form(""),
    username: str = Form(""),
) -> Response:
    def set_role(db: Database, target: int) -> User:
        return accounts.set_role(db, target, role)

    target = (user_id, username)
    response = await _act(request, state, active.user, target, f"given role {role!r}", set_role)
    if response.status_code == 303 and user_id == active.user.id and role != Role.ADMIN.value:
        # The users page is for admins only, so an admin who stepped down goes to the chats.
        return RedirectResponse("/chats", 303)
    return response


@router.post("/admin/users/{user_id}/deactivate", dependencies=[CsrfChecked])
async def deactivate(
    request: Request, state: State, active: AdminUser, user_id: AccountId, username: str = Form("")
) -> Response:
    target = (user_id, username)
    return await _act(request, state, active.user, target, "deactivated", accounts.deactivate)


@router.post("/admin/users/{user_id}/reactivate", dependencies=[CsrfChecked])
async def reactivate(
    request: Request, state: State, active: AdminUser, user_id: AccountId, username: str = Form("")
) -> Response:
    target = (user_id, username)
    return await _act(request, state, active.user, target, "reactivated", accounts.reactivate)


@router.get("/admin/users/{user_id}/delete", response_class=HTMLResponse)
async def delete_page(
    request: Request, state: State, active: AdminUser, user_id: AccountId
) -> Response:
    target = await run_in_threadpool(accounts.get_account, state.db, user_id)
    return render(request, "admin/delete_user.html", {"target": target, "error": None})


@router.post("/admin/users/{user_id}/delete", dependencies=[CsrfChecked])
async def delete(
    request: Request,
    state: State,
    active: AdminUser,
    user_id: AccountId,
    confirm_username: str = Form(""),
) -> Response:
    target = await run_in_threadpool(accounts.get_account, state.db, user_id)
    try:
        if confirm_username.strip() != target.username:
            raise InvalidInput(
                f"typed username {quote_value(confirm_username)} does not match the account; "
                f"type {target.username} to delete it"
            )
        await run_in_threadpool(accounts.delete_account, state.db, user_id)
    except ServiceError as exc:
        log.info("admin %s: deleting account %s rejected: %s", active.user.id, user_id, exc.message)
        context = {"target": target, "error": exc.message}
        return render(request, "admin/delete_user.html", context, status_code=exc.status_code)
    log.info("admin %s deleted account %s", active.user.id, user_id)
    return RedirectResponse("/admin/users", 303)


def count_by_state(users: Sequence[User]) -> dict[str, int]:
    """Count accounts per role, with deactivated accounts counted apart from their role."""
    counts = Counter("deactivated" if not user.is_active else user.role.value for user in users)
    return {name: counts.get(name, 0) for name in [*ROLES, "deactivated"]}


def format_duration(seconds: float) -> str:
    """Format seconds as days, hours and minutes, such as "2 d 3 h 4 min"."""
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


async def _act(
    request: Request,
    state: WebState,
    admin: User,
    target: tuple[int, str],
    done: str,
    action: Callable[[Database, int], User],
) -> Response:
    """Run one account action; on success go back to the list, else show it with the reason.

    `target` is the account's id and, from the users page, its username, which
    must still match. Ids are never reused (migration 0003), so this second
    check only guards against a form that names the wrong account.
    """
    user_id, username = target

    def checked_action(db: Database, user_id: int) -> User:
        if username and accounts.get_account(db, user_id).username != username:
            raise NotFound(
                f"account {user_id} is no longer {quote_value(username)}; it was deleted, "
                "so reload the users page"
            )
        return action(db, user_id)

    try:
        await run_in_threadpool(checked_action, state.db, user_id)
    except ServiceError as exc:
        log.info("admin %s: action on account %s rejected: %s", admin.id, user_id, exc.message)
        return await _render_users(request, state, error=exc.message, status=exc.status_code)
    log.info("admin %s: account %s %s", admin.id, user_id, done)
    return RedirectResponse("/admin/users", 303)


async def _render_users(
    request: Request,
    state: WebState,
    *,
    role: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    role_filter = _parse_role_filter(role)
    users = await run_in_threadpool(accounts.list_accounts, state.db, role=role_filter)
    context = {
        "users": users,
        "roles": ROLES,
        "role_filter": role_filter.value if role_filter else "",
        "error": error,
    }
    return render(request, "admin/users.html", context, status_code=status)


def _parse_role_filter(role: str | None) -> Role | None:
    if not role:
        return None
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput(
            f"role filter {quote_value(role)} is unknown; expected one of: {', '.join(ROLES)}"
        ) from None
