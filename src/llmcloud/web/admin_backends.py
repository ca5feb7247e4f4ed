"""Admin pages for model backends: list them with their health, add and remove them.

The gateway's backends come from two places. Those in the settings
(`gateway_backends`, or the one engine at `engine_url`) are fixed while the
app runs. Those an admin adds here are stored in the `backends` table. The
gateway gets both lists merged, at start-up (this router's lifespan) and
after every change on this page (`Gateway.set_backends`). A stored backend
whose name is already used in the settings, or whose row no longer passes
validation, is left out with a warning, and this page shows why.

The stored rows have no `max_parallel` or `ca_bundle` column, so backends
added here get the defaults of `llmcloud.gateway.Backend`.

Other web processes on the same database pick a change up by reading the
table again every `gateway_health_interval` seconds, the same pace at which
their gateways notice a backend's health change. The gateway's list is
replaced only when the rows changed, and a failed read keeps the current list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from llmcloud.db import backends as stored_backends
from llmcloud.db.errors import Conflict, InvalidInput, ServiceError, quote_value
from llmcloud.db.models import Backend as BackendRow
from llmcloud.gateway import Backend, BackendStatus, default_backends
from llmcloud.gateway.config import hide_userinfo
from llmcloud.web.deps import AdminUser, BackendId, CsrfChecked, State, WebState
from llmcloud.web.templating import render

log = logging.getLogger("llmcloud.web")

# The largest weight that the gateway's Backend model takes.
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class MergedBackends:
    """The gateway's backends and the stored ones that were left out, with the reason."""

    configs: list[Backend]
    configured_names: frozenset[str]
    stored_ids: dict[str, int]
    """Database id of each stored backend in `configs`, by name."""
    skipped: dict[int, str]
    """Reason each stored backend that is not in `configs` was left out, by database id."""


def merge_backends(configured: Sequence[Backend], rows: Sequence[BackendRow]) -> MergedBackends:
    """Append the stored backends to the configured ones, skipping clashes and invalid rows."""
    configs = list(configured)
    names = frozenset(config.name for config in configured)
    stored_ids: dict[str, int] = {}
    skipped: dict[int, str] = {}
    for row in rows:
        if row.name in names:
            skipped[row.id] = f"the settings already define a backend named {row.name!r}"
            continue
        try:
            configs.append(_config_of(row))
        except ValidationError as exc:
            skipped[row.id] = "invalid stored values: " + describe_validation_error(exc)
            continue
        stored_ids[row.name] = row.id
    return MergedBackends(configs, names, stored_ids, skipped)


async def apply_backends(state: WebState) -> MergedBackends:
    """Read the stored backends and give the gateway the merged list."""
    rows = await run_in_threadpool(stored_backends.list_backends, state.db)
    return _apply_rows(state, rows)


def _apply_rows(state: WebState, rows: Sequence[BackendRow]) -> MergedBackends:
    merged = merge_backends(default_backends(state.settings), rows)
    for row_id, reason in merged.skipped.items():
        log.warning("stored backend %s left out of the gateway: %s", row_id, reason)
    state.models.set_backends(merged.configs)
    return merged


RowSignature = tuple[tuple[object, ...], ...]


def _signature(rows: Sequence[BackendRow]) -> RowSignature:
    """Return every stored value that the gateway's list depends on, to detect a change."""
    return tuple(
        (row.id, row.name, row.kind, row.base_url, row.api_key, row.weight, row.enabled)
        for row in rows
    )


async def follow_stored_backends(state: WebState, interval: float, seen: RowSignature) -> None:
    """Apply the stored backends whenever they differ from `seen`, checking every `interval` s.

    Runs until cancelled. This is how a change made on another web instance reaches this
    instance's gateway. A database error is logged once per outage, and the gateway keeps
    its current backends until a read succeeds again.
    """
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            rows = await run_in_threadpool(stored_backends.list_backends, state.db)
        except SQLAlchemyError as exc:
            if not failing:
                log.warning(
                    "reading the stored backends failed, so the gateway keeps its list: %s", exc
                )
            failing = True
            continue
        if failing:
            log.info("reading the stored backends works again")
            failing = False

        signature = _signature(rows)
        if signature == seen:
            continue
        seen = signature
        merged = _apply_rows(state, rows)
        log.info("stored backends changed, so the gateway now uses %d", len(merged.stored_ids))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Add the stored backends to the gateway once the app has opened both, then follow them."""
    state: WebState = app.state.web
    rows = await run_in_threadpool(stored_backends.list_backends, state.db)
    # Without stored rows the gateway keeps exactly what the app gave it.
    if rows:
        merged = _apply_rows(state, rows)
        log.info("gateway uses %d stored backends", len(merged.stored_ids))

    follower = asyncio.create_task(
        follow_stored_backends(state, state.settings.gateway_health_interval, _signature(rows)),
        name="stored-backends",
    )
    try:
        yield
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


router = APIRouter(lifespan=lifespan)


@router.get("/admin/backends", response_class=HTMLResponse)
async def backends_page(request: Request, state: State, active: AdminUser) -> Response:
    return await _render_page(request, state)


@router.post("/admin/backends", dependencies=[CsrfChecked])
async def add_backend(
    request: Request,
    state: State,
    active: AdminUser,
    name: str = Form(""),
    kind: str = Form("ollama"),
    base_url: str = Form(""),
    api_key: str = Form(""),
    weight: str = Form("1"),
) -> Response:
    # The form is shown again after an error, without a password typed into the URL.
    form = {"name": name, "kind": kind, "base_url": hide_userinfo(base_url), "weight": weight}
    try:
        config = _validate_form(name, kind, base_url, api_key, weight)
        configured = {backend.name.lower() for backend in default_backends(state.settings)}
        if config.name.lower() in configured:
            raise Conflict(
                f"backend name {quote_value(name)} is already used in the settings "
                "(gateway_backends); choose another"
            )
        row = await run_in_threadpool(_store, state, config)
    except ServiceError as exc:
        log.info("admin %s: adding backend %r rejected: %s", active.user.id, name, exc.message)
        return await _render_page(
            request, state, error=exc.message, form=form, status=exc.status_code
        )

    await apply_backends(state)
    log.info("admin %s added backend %s (%s)", active.user.id, row.id, row.name)
    return RedirectResponse("/admin/backends", 303)


@router.post("/admin/backends/{backend_id}/remove", dependencies=[CsrfChecked])
async def remove_backend(
    request: Request, state: State, active: AdminUser, backend_id: BackendId
) -> Response:
    try:
        row = await run_in_threadpool(stored_backends.remove_backend, state.db, backend_id)
    except ServiceError as exc:
        log.info(
            "admin %s: removing backend %s rejected: %s", active.user.id, backend_id, exc.message
        )
        return await _render_page(request, state, error=exc.message, status=exc.status_code)
    await apply_backends(state)
    log.info("admin %s removed backend %s (%s)", active.user.id, backend_id, row.name)
    return RedirectResponse("/admin/backends", 303)


def describe_validation_error(exc: ValidationError) -> str:
    """Name each invalid field with pydantic's message, without echoing the submitted values."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        field = ".".join(str(part) for part in error["loc"]) or "value"
        problems.append(f"{field}: {error['msg']}")
    return "; ".join(problems)


def _validate_form(name: str, kind: str, base_url: str, api_key: str, weight: str) -> Backend:
    try:
        return Backend(
            name=name.strip(),
            kind=kind,
            base_url=base_url.strip(),
            api_key=SecretStr(api_key.strip()) if api_key.strip() else None,
            weight=parse_weight(weight),
        )
    except ValidationError as exc:
        raise InvalidInput("invalid backend: " + describe_validation_error(exc)) from None


def parse_weight(text: str) -> int:
    """Parse the form's weight: ASCII digits for 1 to MAX_WEIGHT, with 1 for an empty field."""
    text = text.strip() or "1"
    # The length check comes first, because int() rejects a string of over 4,300 digits.
    digits = text.lstrip("0")
    if text.isascii() and text.isdigit() and len(digits) <= len(str(MAX_WEIGHT)):
        weight = int(text)
        if 1 <= weight <= MAX_WEIGHT:
            return weight
    raise InvalidInput(
        f"weight {quote_value(text)} is not a whole number from 1 to {MAX_WEIGHT}; "
        "enter the backend's share of the load, such as 1"
    )


def _store(state: WebState, config: Backend) -> BackendRow:
    return stored_backends.add_backend(
        state.db,
        name=config.name,
        kind=config.kind,
        base_url=config.base_url,
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        weight=config.weight,
        enabled=config.enabled,
    )


def _config_of(row: BackendRow) -> Backend:
    # A weight of 0, which the table allows but the gateway does not, means "take no requests".
    return Backend(
        name=row.name,
        kind=row.kind.value,
        base_url=row.base_url,
        api_key=SecretStr(row.api_key) if row.api_key else None,
        weight=max(row.weight, 1),
        enabled=row.enabled and row.weight > 0,
    )


@dataclass(frozen=True)
class BackendView:
    """One row of the backends page: the gateway's status, or a stored row left out."""

    name: str
    source: str
    status: BackendStatus | None
    stored_id: int | None
    problem: str | None = None


async def _render_page(
    request: Request,
    state: WebState,
    *,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    rows = await run_in_threadpool(stored_backends.list_backends, state.db)
    merged = merge_backends(default_backends(state.settings), rows)
    context: dict[str, Any] = {
        "backends": _views(state, merged, rows),
        "error": error,
        "form": form or {"name": "", "kind": "ollama", "base_url": "", "weight": "1"},
    }
    return render(request, "admin/backends.html", context, status_code=status)


def _views(
    state: WebState, merged: MergedBackends, rows: Sequence[BackendRow]
) -> list[BackendView]:
    views = []
    for backend in state.models.status().backends:
        stored_id = merged.stored_ids.get(backend.name)
        source = "settings" if backend.name in merged.configured_names else "admin page"
        views.append(BackendView(backend.name, source, backend, stored_id))
    for row in rows:
        if row.id in merged.skipped:
            views.append(BackendView(row.name, "admin page", None, row.id, merged.skipped[row.id]))
    return views
