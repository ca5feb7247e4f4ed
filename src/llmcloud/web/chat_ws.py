"""The chat WebSocket, `/ws/chats/{chat_id}`: prompts in, answer tokens out.

A reverse proxy needs only the standard upgrade headers for it. The
handshake must come from the app's own origin (checked before the socket is
accepted, so another site learns nothing) and carry a session cookie. Then
both sides exchange JSON text messages. From the browser:

    {"type": "send", "content": "...", "model": "...", "last_message_id": 6}
    {"type": "regenerate", "model": "...", "last_message_id": 7}
    {"type": "stop"}

`model` is optional for a regenerate. `last_message_id`, also optional, is
the newest message the page shows (0 for none). When the chat has changed
since, in another tab, the prompt or regenerate gets an error that asks for
a reload, because the answer would build on messages the page does not show.

From the server, while an answer is generated:

    {"type": "accepted", "message_id": 7}      the prompt is saved
    {"type": "accepted", "removed_message_id": 8}    regenerating: the answer replaced, or null
    {"type": "queued", "position": 2}          waiting for a free backend
    {"type": "started"}
    {"type": "token", "text": "..."}           one per token, sent as it arrives
    {"type": "done", "status": "complete" | "interrupted", "message_id", "html", "reason", ...}
    {"type": "error", "message": "...", "partial": bool, ...}
    {"type": "title", "title": "..."}          the chat was named after its first prompt

`html` is the whole answer rendered as sanitised Markdown, which replaces
the streamed text. `reason` says why an answer was interrupted, or why a
complete one was cut short, and is null otherwise.

A malformed message, or a model that no backend lists, gets an `error`
before anything is saved, and the socket stays open. The
session is checked again with every prompt, so a logged-out account gets
an error and the socket closes with code 4401 (4403 for a deactivated or
pending account, 4404 for a chat that is not the account's).

A chat answers one prompt at a time, whichever socket sent it: another tab
that sends a prompt or regenerates meanwhile gets an error (answer_claims.py).
While an answer runs, the session and the chat are checked every
`ACCESS_CHECK_SECONDS`: when the account logs out, is deactivated or
deleted, or the chat is deleted, the answer stops, the socket gets an error
and closes with the codes above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import unicodedata
from typing import Any, Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.websockets import WebSocketDisconnect

from llmcloud.auth import accounts
from llmcloud.auth.errors import CsrfFailed, ServiceError, SessionExpired
from llmcloud.db import chats
from llmcloud.db.models import MessageRole
from llmcloud.gateway import GatewayStatus, UnknownModel
from llmcloud.text import json_type_name, may_have_surrogate, number_too_long, surrogate_problem
from llmcloud.web.answer_claims import AnswerClaims, Claim
from llmcloud.web.chat_stream import DISCONNECTED, SERVER_STOPPED, AnswerStream, stopped_message
from llmcloud.web.deps import MAX_ROW_ID, WebState, current_session, web_state
from llmcloud.web.live import TERMINAL_TYPES, Publisher
from llmcloud.web.security import check_same_origin

log = logging.getLogger("llmcloud.web")

router = APIRouter()

TITLE_LENGTH = 60
POLICY_VIOLATION = 1008
# The close code, Service Restart in IANA's registry, that uvicorn gives sockets at shutdown.
SERVICE_RESTART = 1012
ACCESS_CHECK_SECONDS = 10.0
NOTHING_TO_ANSWER = "the chat has no message to answer yet; send a prompt"
CHAT_CHANGED = (
    "this chat has new messages from another tab that this page does not show; "
    "reload the page, then send again"
)

# Why an answer stopped, saved with it, by the status of the failed access check.
ACCESS_LOST = {
    401: "the session ended during the answer",
    403: "the account was deactivated during the answer",
    404: "the chat was deleted during the answer",
}


class SendPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["send"]
    content: str
    model: str
    last_message_id: StrictInt | None = Field(None, ge=0, le=MAX_ROW_ID)


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["regenerate"]
    model: str | None = None
    last_message_id: StrictInt | None = Field(None, ge=0, le=MAX_ROW_ID)


class InvalidClientMessage(Exception):
    """A message from the browser that does not follow the protocol."""


@router.websocket("/ws/chats/{chat_id}")
async def chat_socket(websocket: WebSocket, chat_id: str) -> None:
    state = web_state(websocket)
    try:
        if not check_same_origin(websocket, state.settings):
            raise CsrfFailed("WebSocket handshake without an Origin header")
    except CsrfFailed as exc:
        log.info("chat WebSocket rejected: %s", exc.message)
        await websocket.close(code=POLICY_VIOLATION)
        return

    await websocket.accept()
    conversation = ChatConversation(websocket, state, chat_id)
    if await conversation.authorize():
        await conversation.run()


class ChatConversation:
    """One open chat socket: reads the browser's messages and runs one answer at a time."""

    def __init__(self, websocket: WebSocket, state: WebState, chat_id: str) -> None:
        self.websocket = websocket
        self.state = state
        self.chat_id = chat_id
        self.user_id = 0
        self.stream: AnswerStream | None = None
        self.publisher: Publisher | None = None
        self.task: asyncio.Task[None] | None = None
        self.guard: asyncio.Task[None] | None = None
        self.claims: AnswerClaims = websocket.app.state.answer_claims

    async def authorize(self) -> bool:
        """Check the session and that the chat is the account's; else send the reason and close."""
        try:
            active = await asyncio.to_thread(current_session, self.websocket)
            self.user_id = active.user.id
            await asyncio.to_thread(chats.get_chat, self.state.db, self.user_id, self.chat_id)
        except ServiceError as exc:
            await self.send({"type": "error", "message": exc.message, "partial": False})
            await self.websocket.close(code=4000 + exc.status_code)
            return False
        return True

    async def run(self) -> None:
        reason = DISCONNECTED
        try:
            while True:
                text = await self._receive_text()
                if text is None:
                    continue
                await self._dispatch(text)
        except WebSocketDisconnect as exc:
            if exc.code == SERVICE_RESTART:
                reason = SERVER_STOPPED
        finally:
            if self.guard is not None:
                self.guard.cancel()
            await self._cancel(reason)

    async def send(self, payload: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(payload, ensure_ascii=False))

    async def _receive_text(self) -> str | None:
        """Return the next text message, or None after answering a binary one with an error."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("text") is None:
            await self._error("binary messages are not supported; send JSON text")
            return None
        text: str = message["text"]
        return text

    async def _dispatch(self, text: str) -> None:
        try:
            data = parse_client_message(text, self.state.settings.web_max_prompt_length)
            kind = data["type"]
            if kind == "stop":
                await self._stop()
            elif kind == "send":
                await self._send_prompt(SendPrompt.model_validate(data))
            else:
                await self._regenerate(Regenerate.model_validate(data))
        except ValidationError as exc:
            await self._error(describe_validation_error(exc))
        except InvalidClientMessage as exc:
            await self._error(str(exc))
        except UnknownModel as exc:
            await self._error(exc.message)
        except ServiceError as exc:
            await self._error(exc.message)
            if exc.status_code in (401, 403):
                await self.websocket.close(code=4000 + exc.status_code)
                raise WebSocketDisconnect(4000 + exc.status_code) from None

    async def _send_prompt(self, prompt: SendPrompt) -> None:
        self._check_idle()
        content = check_prompt(prompt.content, self.state.settings.web_max_prompt_length)
        model = chats.validate_model_name(prompt.model.strip())
        if not model:
            raise InvalidClientMessage("field model is empty; pick a model in the model picker")
        await asyncio.to_thread(self._check_session)
        check_model_listed(self.state.models.status(), model)
        await self.websocket.app.state.rate_limiter.hit(f"chat:{self.user_id}")

        chat = await asyncio.to_thread(chats.get_chat, self.state.db, self.user_id, self.chat_id)
        claim = await self.claims.claim(self.chat_id)
        try:
            await self._check_current(prompt.last_message_id)
            saved = await asyncio.to_thread(
                chats.add_message,
                self.state.db,
                self.user_id,
                self.chat_id,
                MessageRole.USER,
                content,
            )
            await self.send({"type": "accepted", "message_id": saved.id})
            if chat.model != model:
                await asyncio.to_thread(
                    chats.set_chat_model, self.state.db, self.user_id, self.chat_id, model
                )
            if chat.title == chats.DEFAULT_TITLE:
                await self._name_chat(content)
        except BaseException:
            await claim.release()
            raise
        self._start(model, claim)

    async def _regenerate(self, request: Regenerate) -> None:
        self._check_idle()
        await asyncio.to_thread(self._check_session)
        await self.websocket.app.state.rate_limiter.hit(f"chat:{self.user_id}")
        chat = await asyncio.to_thread(chats.get_chat, self.state.db, self.user_id, self.chat_id)
        model = (request.model or "").strip() or chat.model
        if not model:
            if not await asyncio.to_thread(
                chats.list_messages, self.state.db, self.user_id, self.chat_id
            ):
                raise InvalidClientMessage(NOTHING_TO_ANSWER)
            raise InvalidClientMessage("no model to regenerate with; pick one in the model picker")
        chats.validate_model_name(model)
        check_model_listed(self.state.models.status(), model)

        claim = await self.claims.claim(self.chat_id)
        try:
            await self._check_current(request.last_message_id)
            messages = await asyncio.to_thread(
                chats.list_messages, self.state.db, self.user_id, self.chat_id
            )
            if not messages:
                raise InvalidClientMessage(NOTHING_TO_ANSWER)
            removed = None
            if messages[-1].role == MessageRole.ASSISTANT:
                removed = await asyncio.to_thread(
                    chats.remove_last_answer, self.state.db, self.user_id, self.chat_id
                )
            removed_id = removed.id if removed is not None else None
            await self.send({"type": "accepted", "removed_message_id": removed_id})
        except BaseException:
            await claim.release()
            raise
        self._start(model, claim)

    async def _stop(self) -> None:
        """Stop the answer in progress; a stop without one is ignored, as it may cross a `done`."""
        stream = self.stream
        if self.task is None or self.task.done() or stream is None:
            return
        await self._cancel(stream.cancel_reason)
        await self.send(await stopped_message(stream))

    def _start(self, model: str, claim: Claim) -> None:
        # Watchers of /ws/chats/{chat_id}/live receive the same events (web/live.py).
        async def send(payload: dict[str, Any]) -> None:
            # Give the chat back before its answer's last message, so that a prompt sent
            # in reply to it finds the chat free.
            if payload["type"] in TERMINAL_TYPES:
                await claim.release()
            await self.send(payload)

        self.publisher = Publisher(self.websocket.app.state.live, self.chat_id, send)
        self.stream = AnswerStream(
            self.state.db,
            self.state.models,
            self.user_id,
            self.chat_id,
            model,
            self.publisher,
            max_tokens=self.state.settings.web_max_answer_tokens,
        )
        self.task = asyncio.create_task(
            self._answer(self.stream, claim), name=f"chat-answer-{self.chat_id}"
        )
        self.guard = asyncio.create_task(self._guard(self.task), name=f"chat-guard-{self.chat_id}")

    @staticmethod
    async def _answer(stream: AnswerStream, claim: Claim) -> None:
        try:
            await stream.run()
        finally:
            await claim.release()

    async def _guard(self, task: asyncio.Task[None]) -> None:
        """Stop the answer when the account may no longer see the chat; see the module's doc."""
        while True:
            done, _ = await asyncio.wait([task], timeout=ACCESS_CHECK_SECONDS)
            if done:
                return
            try:
                await asyncio.to_thread(self.check_access)
            except ServiceError as exc:
                reason = ACCESS_LOST.get(exc.status_code, exc.message)
                log.info("chat %s: answer stopped: %s", self.chat_id, reason)
                stream = self.stream
                await self._cancel(reason)
                with contextlib.suppress(Exception):
                    if stream is not None:
                        # Show what was kept of the answer, as Stop does.
                        await self.send(await stopped_message(stream))
                    await self._error(exc.message)
                    await self.websocket.close(code=4000 + exc.status_code)
                return

    async def _cancel(self, reason: str) -> None:
        task, stream = self.task, self.stream
        if task is None or task.done():
            return
        if stream is not None:
            stream.cancel_reason = reason
        task.cancel()
        await asyncio.wait([task])
        if stream is not None and self.publisher is not None:
            await self.publisher.publish(await stopped_message(stream))

    async def _check_current(self, last_message_id: int | None) -> None:
        """Raise InvalidClientMessage when the chat has messages newer than the page shows."""
        if last_message_id is None:
            return
        newest = await asyncio.to_thread(
            chats.last_message_id, self.state.db, self.user_id, self.chat_id
        )
        if newest != last_message_id:
            raise InvalidClientMessage(CHAT_CHANGED)

    def _check_idle(self) -> None:
        if self.task is not None and not self.task.done():
            raise InvalidClientMessage(
                "an answer is still being generated; wait for it or stop it first"
            )

    def _check_session(self) -> None:
        """Check the session again, raising AccountDeactivated when deactivation ended it."""
        self.websocket.state.session = None
        try:
            current_session(self.websocket)
        except SessionExpired:
            try:
                account = accounts.get_account(self.state.db, self.user_id)
            except ServiceError:
                raise SessionExpired(
                    "the account was deleted; ask an admin for a new one"
                ) from None
            accounts.check_can_log_in(account)
            raise

    def check_access(self) -> None:
        """Raise ServiceError unless the session is live and the chat is still the account's."""
        self._check_session()
        chats.get_chat(self.state.db, self.user_id, self.chat_id)

    async def _name_chat(self, content: str) -> None:
        title = shorten_title(content)
        await asyncio.to_thread(chats.rename_chat, self.state.db, self.user_id, self.chat_id, title)
        await self.send({"type": "title", "title": title})

    async def _error(self, message: str) -> None:
        await self.send({"type": "error", "message": message, "partial": False})


def parse_client_message(text: str, max_prompt_length: int) -> dict[str, Any]:
    """Return a browser message as a dict with a known `type`, or raise InvalidClientMessage."""
    # JSON escapes can take 6 characters per character of the prompt (\\uXXXX).
    limit = 6 * max_prompt_length + 4096
    if len(text) > limit:
        raise InvalidClientMessage(
            f"message has {len(text)} characters; expected at most {limit}. "
            f"Prompts may have at most {max_prompt_length} characters"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidClientMessage(
            f"message is not valid JSON ({exc.msg} at column {exc.colno}); expected an object "
            'such as {"type": "send", "content": "Hello", "model": "smollm2:135m"}'
        ) from None
    except RecursionError:
        raise InvalidClientMessage("message is not valid JSON: it is nested too deeply") from None
    except ValueError:
        # Python's limit on the digits of an integer (4,300 by default) raises ValueError.
        raise InvalidClientMessage(number_too_long("message")) from None
    if not isinstance(data, dict):
        raise InvalidClientMessage(
            f"message is a JSON {json_type_name(data)}; expected an object with a type field"
        )
    if may_have_surrogate(text):
        problem = surrogate_problem(data)
        if problem is not None:
            raise InvalidClientMessage(f"message field {problem[1]}")
    kind = data.get("type")
    if kind not in ("send", "stop", "regenerate"):
        shown = json.dumps(kind)[:40]
        raise InvalidClientMessage(
            f"message type {shown} is unknown; expected send, stop or regenerate"
        )
    return data


def check_model_listed(status: GatewayStatus, model: str) -> None:
    """Raise UnknownModel when every enabled backend has returned a model list without `model`.

    While no backend is enabled, or one has not returned a model list yet, the
    model may still exist, so the check passes and the gateway reports the
    outage on the answer instead.
    """
    enabled = [backend for backend in status.backends if backend.enabled]
    if not enabled:
        return
    for backend in enabled:
        # Ollama reads a name without a tag as NAME:latest.
        alias = f"{model}:latest" if backend.kind == "ollama" and ":" not in model else model
        if model in backend.models or alias in backend.models:
            return
    if any(not backend.healthy and not backend.models for backend in enabled):
        return
    known = sorted({name for backend in enabled for name in backend.models})
    raise UnknownModel(model, known)


def check_prompt(content: str, max_length: int) -> str:
    if not content.strip():
        raise InvalidClientMessage("prompt is empty; type a message before sending")
    if len(content) > max_length:
        raise InvalidClientMessage(
            f"prompt has {len(content)} characters; expected at most {max_length} "
            "(setting web_max_prompt_length). Shorten it or split it into several messages"
        )
    return content


def shorten_title(content: str) -> str:
    """Return the first line of a prompt, cut to TITLE_LENGTH characters, as a chat title.

    Control characters, which a title may not hold, are left out.
    """
    line = content.strip().splitlines()[0]
    printable = "".join(char for char in line if unicodedata.category(char) != "Cc")
    first_line = " ".join(printable.split()) or chats.DEFAULT_TITLE
    if len(first_line) <= TITLE_LENGTH:
        return first_line
    return first_line[: TITLE_LENGTH - 1].rstrip() + "…"


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "message"
        problems.append(f"field {field}: {error['msg']}")
    return "invalid message: " + "; ".join(problems)
