"""The API keys page: an account creates, lists and revokes keys for the /v1 API.

A new key is shown once, in the response to the POST that creates it, and
never again: the database holds only its SHA-256 (`llmcloud.auth.api_keys`).
That page is sent with `Cache-Control: no-store`, so that the browser does
not keep the key in its cache. The key list names each key by its first
characters.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from llmcloud.auth import api_keys
from llmcloud.auth.errors import ServiceError
from llmcloud.auth.sessions import ActiveSession
from llmcloud.web.deps import ApiKeyId, CsrfChecked, CurrentUser, State, WebState
from llmcloud.web.templating import render

log = logging.getLogger("llmcloud.web")

router = APIRouter()


@router.get("/api-keys", response_class=HTMLResponse)
async def api_keys_page(request: Request, state: State, active: CurrentUser) -> Response:
    return await _render(request, state, active)


@router.post("/api-keys", dependencies=[CsrfChecked])
async def create_key(
    request: Request, state: State, active: CurrentUser, name: str = Form("")
) -> Response:
    try:
        created = await run_in_threadpool(api_keys.create_api_key, state.db, active.user.id, name)
    except ServiceError as exc:
        log.info("account %s: creating an API key rejected: %s", active.user.id, exc.message)
        return await _render(
            request, state, active, error=exc.message, name=name, status=exc.status_code
        )
    response = await _render(
        request, state, active, new_key=created.key, new_name=created.record.name
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/api-keys/{key_id}/revoke", dependencies=[CsrfChecked])
async def revoke_key(
    request: Request, state: State, active: CurrentUser, key_id: ApiKeyId
) -> Response:
    try:
        await run_in_threadpool(api_keys.revoke_api_key, state.db, active.user.id, key_id)
    except ServiceError as exc:
        log.info(
            "account %s: revoking API key %s rejected: %s", active.user.id, key_id, exc.message
        )
        return await _render(request, state, active, error=exc.message, status=exc.status_code)
    return RedirectResponse("/api-keys", 303)


def api_base_url(request: Request, state: WebState) -> str:
    """Return the base URL that OpenAI clients take: the app's public URL plus /v1."""
    if state.settings.public_url is not None:
        return state.settings.public_url + "/v1"
    return str(request.base_url).rstrip("/") + "/v1"


async def _render(
    request: Request,
    state: WebState,
    active: ActiveSession,
    *,
    error: str | None = None,
    name: str = "",
    new_key: str | None = None,
    new_name: str | None = None,
    status: int = 200,
) -> Response:
    keys = await run_in_threadpool(api_keys.list_api_keys, state.db, active.user.id)
    context: dict[str, Any] = {
        "keys": keys,
        "error": error,
        "name": name,
        "new_key": new_key,
        "new_name": new_name,
        "base_url": api_base_url(request, state),
        "max_name_length": api_keys.MAX_NAME_LENGTH,
    }
    return render(request, "api_keys/index.html", context, status_code=status)
