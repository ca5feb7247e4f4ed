"""Chat pages: the list of an account's chats, one chat, and their actions.

Every chat function of `llmcloud.db.chats` filters on the owner, so a chat
id of another account gets the same 404 as one that does not exist. The
answers themselves stream over the WebSocket in `llmcloud.web.chat_ws`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from llmcloud.db import chats
from llmcloud.db.chat_export import MAX_IMPORT_CHATS, export_chat, export_chats, import_chats
from llmcloud.db.errors import InvalidInput
from llmcloud.db.models import Message, MessageRole
from llmcloud.web.deps import CsrfChecked, CurrentUser, State
from llmcloud.web.markdown import render_answers
from llmcloud.web.templating import render

log = logging.getLogger("llmcloud.web")

router = APIRouter()

PAGE_SIZE = 50


@dataclass(frozen=True)
class MessageView:
    """A message as the chat page shows it; `html` is the sanitised Markdown of an answer."""

    id: int
    role: str
    content: str
    html: str | None
    status: str
    error: str | None
    model: str | None


async def message_views(messages: Sequence[Message]) -> list[MessageView]:
    answers = [message.content for message in messages if message.role == MessageRole.ASSISTANT]
    rendered = iter(await render_answers(answers))
    return [
        message_view(message, next(rendered) if message.role == MessageRole.ASSISTANT else None)
        for message in messages
    ]


def message_view(message: Message, html: str | None) -> MessageView:
    return MessageView(
        id=message.id,
        role=message.role.value,
        content=message.content,
        html=html,
        status=message.status.value,
        error=message.error,
        model=message.model,
    )


@router.get("/chats", response_class=HTMLResponse)
def chat_list(
    request: Request,
    state: State,
    active: CurrentUser,
    q: str = "",
    offset: int = 0,
    imported: Annotated[int | None, Query(ge=0, le=MAX_IMPORT_CHATS)] = None,
) -> Response:
    """Show a page of the account's chats; `imported` is the count an import redirects with."""
    found = chats.list_chats(state.db, active.user.id, search=q, limit=PAGE_SIZE + 1, offset=offset)
    context = {
        "chats": found[:PAGE_SIZE],
        "query": q,
        "offset": offset,
        "next_offset": offset + PAGE_SIZE if len(found) > PAGE_SIZE else None,
        "page_size": PAGE_SIZE,
        "imported": imported,
    }
    return render(request, "chats.html", context)


@router.post("/chats", dependencies=[CsrfChecked])
def new_chat(state: State, active: CurrentUser) -> Response:
    chat = chats.create_chat(state.db, active.user.id)
    return RedirectResponse(f"/chats/{chat.id}", 303)


@router.get("/chats/export")
def export_all(state: State, active: CurrentUser) -> Response:
    archive = export_chats(state.db, active.user.id)
    return _json_download(archive, f"llmcloud-chats-{active.user.username}.json")


@router.post("/chats/import", dependencies=[CsrfChecked])
async def import_file(
    request: Request, state: State, active: CurrentUser, file: UploadFile
) -> Response:
    limit = state.settings.web_max_import_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(
            f"import file {file.filename!r} is larger than {limit} bytes "
            "(setting web_max_import_bytes); split the export or raise the limit"
        )
    created = await run_in_threadpool(import_chats, state.db, active.user.id, data)
    log.info("account %s imported %s chats", active.user.id, len(created))
    if len(created) == 1:
        return RedirectResponse(f"/chats/{created[0].id}", 303)
    return RedirectResponse(f"/chats?imported={len(created)}", 303)


@router.get("/chats/{chat_id}", response_class=HTMLResponse)
async def chat_page(request: Request, state: State, active: CurrentUser, chat_id: str) -> Response:
    return await _render_chat_page(request, state, active, chat_id)


async def _render_chat_page(
    request: Request,
    state: State,
    active: CurrentUser,
    chat_id: str,
    form: dict[str, str] | None = None,
) -> Response:
    """Render a chat; `form` has a rejected settings form's typed value and error (HTTP 422)."""
    chat = await run_in_threadpool(chats.get_chat, state.db, active.user.id, chat_id)
    # Checked first, so that an answer which ends meanwhile is in the messages or announced.
    answering = await request.app.state.answer_claims.is_claimed(chat_id)
    messages = await run_in_threadpool(chats.list_messages, state.db, active.user.id, chat_id)
    models = [model.name for model in await state.models.models()]
    context = {
        "chat": chat,
        "messages": await message_views(messages),
        "models": models,
        "selected_model": pick_model(models, chat.model, state.settings.web_default_model),
        "max_prompt_length": state.settings.web_max_prompt_length,
        "answering": answering,
        **(form or {}),
    }
    return render(request, "chat.html", context, status_code=422 if form else 200)


@router.post("/chats/{chat_id}/rename", dependencies=[CsrfChecked])
async def rename(
    request: Request, state: State, active: CurrentUser, chat_id: str, title: str = Form("")
) -> Response:
    try:
        await run_in_threadpool(chats.rename_chat, state.db, active.user.id, chat_id, title)
    except InvalidInput as exc:
        form = {"title_value": title, "title_error": exc.message}
        return await _render_chat_page(request, state, active, chat_id, form)
    return RedirectResponse(f"/chats/{chat_id}", 303)


@router.post("/chats/{chat_id}/system-prompt", dependencies=[CsrfChecked])
async def system_prompt(
    request: Request,
    state: State,
    active: CurrentUser,
    chat_id: str,
    system_prompt: str = Form(""),
) -> Response:
    try:
        await run_in_threadpool(
            chats.set_system_prompt, state.db, active.user.id, chat_id, system_prompt
        )
    except InvalidInput as exc:
        form = {"system_prompt_value": system_prompt, "system_prompt_error": exc.message}
        return await _render_chat_page(request, state, active, chat_id, form)
    return RedirectResponse(f"/chats/{chat_id}", 303)


@router.post("/chats/{chat_id}/delete", dependencies=[CsrfChecked])
def delete(state: State, active: CurrentUser, chat_id: str) -> Response:
    chats.delete_chat(state.db, active.user.id, chat_id)
    return RedirectResponse("/chats", 303)


@router.get("/chats/{chat_id}/export")
def export_one(state: State, active: CurrentUser, chat_id: str) -> Response:
    archive = export_chat(state.db, active.user.id, chat_id)
    return _json_download(archive, f"llmcloud-chat-{chat_id}.json")


def pick_model(models: list[str], chat_model: str | None, default: str) -> str | None:
    """Return the model the picker preselects: the chat's own, the default, or the first."""
    for candidate in (chat_model, default):
        if candidate and candidate in models:
            return candidate
    return chat_model or (models[0] if models else None)


def _json_download(archive: dict[str, Any], filename: str) -> Response:
    body = json.dumps(archive, ensure_ascii=False, indent=2)
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
