"""One answer of a chat: run it through the gateway, stream it, save it.

The user's message is saved before this starts. The answer is saved once,
when it ends: complete on Done; with the text written so far and status
`interrupted` when the backend fails mid-answer, the user presses Stop or
the browser goes away; with status `error` and no text when the backend
fails before its first token. A chat that the gateway rejects before it
starts (unknown model, full queue, no healthy backend) saves no answer, so
the user can pick another model or retry with Regenerate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from llmcloud.db import chats
from llmcloud.db.database import Database
from llmcloud.db.errors import NotFound
from llmcloud.db.models import Message, MessageRole, MessageStatus
from llmcloud.gateway import (
    Done,
    Failed,
    Gateway,
    GatewayBusy,
    GatewayError,
    Queued,
    ServiceUnavailable,
    Started,
    Token,
)
from llmcloud.web.markdown import render_answer
from llmcloud.web.rejections import REJECTED_STATUSES, context_overflow, rejection_detail

log = logging.getLogger("llmcloud.web")

SendJson = Callable[[dict[str, Any]], Awaitable[None]]

STOPPED = "stopped by the user"
DISCONNECTED = "the browser disconnected during the answer"
SERVER_STOPPED = "the web server stopped during the answer"
# Saved with a complete answer that the token limit or the model's context cut short.
LENGTH_LIMIT = "the answer reached its length limit"
INTERNAL_ERROR = "internal error while generating the answer; the server log has the details"
# The prompt is saved before the answer starts, so sending it again would save it twice.
TRY_AGAIN = "press Regenerate to try again"


class ClientGone(Exception):
    """The WebSocket closed while the answer was being sent."""


@dataclass
class Answer:
    """The answer being generated: its model, the text so far and, once saved, its message."""

    model: str
    parts: list[str]
    saved: Message | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


def history(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Return the messages the model reads, leaving out failed answers without text."""
    turns = []
    for message in messages:
        if message.role == MessageRole.SYSTEM:
            continue
        if message.role == MessageRole.ASSISTANT and not message.content:
            continue
        turns.append({"role": message.role.value, "content": message.content})
    return turns


class AnswerStream:
    """Generates one answer of a chat and sends its events to the browser as they arrive."""

    def __init__(
        self,
        db: Database,
        gateway: Gateway,
        user_id: int,
        chat_id: str,
        model: str,
        send: SendJson,
        *,
        max_tokens: int | None = None,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.user_id = user_id
        self.chat_id = chat_id
        self.send = send
        self.options = {"num_predict": max_tokens} if max_tokens is not None else None
        self.answer = Answer(model=model, parts=[])
        self.cancel_reason = STOPPED
        """The error saved with the partial answer when the task is cancelled."""

    async def run(self) -> None:
        """Generate and save the answer. On cancellation the partial answer is saved first."""
        try:
            await self._generate()
        except asyncio.CancelledError:
            self._save_partial(self.cancel_reason)
            raise
        except ClientGone:
            log.info("chat %s: the browser disconnected during the answer", self.chat_id)
            self._save_partial(DISCONNECTED)
        except Exception:
            log.exception("chat %s: generating the answer failed", self.chat_id)
            self._save_partial(INTERNAL_ERROR)
            await self._send_quietly({"type": "error", "message": INTERNAL_ERROR, "partial": False})

    async def _generate(self) -> None:
        chat = await asyncio.to_thread(chats.get_chat, self.db, self.user_id, self.chat_id)
        messages = await asyncio.to_thread(chats.list_messages, self.db, self.user_id, self.chat_id)
        events = self.gateway.chat(
            self.answer.model, history(messages), options=self.options, system=chat.system_prompt
        )
        try:
            async with aclosing(events):
                async for event in events:
                    await self._handle(event)
        except GatewayError as exc:
            await self._rejected(exc)

    async def _handle(self, event: Queued | Started | Token | Done | Failed) -> None:
        if isinstance(event, Token):
            self.answer.parts.append(event.text)
            await self._send({"type": "token", "text": event.text})
        elif isinstance(event, Queued):
            await self._send({"type": "queued", "position": event.position})
        elif isinstance(event, Started):
            await self._send({"type": "started"})
        elif isinstance(event, Done):
            await self._finished(event)
        else:
            await self._failed(event)

    async def _finished(self, event: Done) -> None:
        reason = LENGTH_LIMIT if event.done_reason == "length" else None
        saved = self._save(
            MessageStatus.COMPLETE,
            reason,
            prompt_tokens=storable_count(event.prompt_tokens),
            completion_tokens=storable_count(event.completion_tokens),
        )
        await self._send(
            {
                "type": "done",
                "status": MessageStatus.COMPLETE.value,
                "message_id": saved.id if saved else None,
                "html": await render_answer(self.answer.text),
                "done_reason": event.done_reason,
                "reason": reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
            }
        )

    async def _failed(self, event: Failed) -> None:
        status = MessageStatus.INTERRUPTED if self.answer.parts else MessageStatus.ERROR
        overflow = context_overflow(event.message)
        if overflow is not None:
            message = (
                f"model '{self.answer.model}' cannot answer this chat: your message, with the "
                f"chat's system prompt, is {overflow.size} tokens, more than the "
                f"{overflow.context} tokens that the model reads at once; shorten it and send "
                "it again"
            )
        elif event.status_code in REJECTED_STATUSES:
            # The backend rejected the request itself, so the same request fails again.
            detail = rejection_detail(event.message)
            message = f"model '{self.answer.model}' cannot answer this chat: {detail}"
        else:
            message = f"{event.message}; {TRY_AGAIN}"
        saved = self._save(status, message)
        log.warning("chat %s: answer failed (%s): %s", self.chat_id, status, event.message)
        await self._send(
            {
                "type": "error",
                "message": message,
                "partial": bool(self.answer.parts),
                "message_id": saved.id if saved else None,
                "html": await render_answer(self.answer.text),
            }
        )

    async def _rejected(self, exc: GatewayError) -> None:
        log.info("chat %s: gateway rejected the chat: %s", self.chat_id, exc.message)
        message = exc.message
        if isinstance(exc, GatewayBusy):
            # The gateway's message names its queue setting, which is for operators.
            message = (
                f"model '{self.answer.model}' is busy with other requests; "
                f"press Regenerate in {exc.retry_after} s to try again"
            )
        elif isinstance(exc, ServiceUnavailable):
            message = f"{exc.message.removesuffix(f'; retry in {exc.retry_after} s')}; {TRY_AGAIN}"
        payload: dict[str, Any] = {"type": "error", "message": message, "partial": False}
        if isinstance(exc, ServiceUnavailable):
            payload["retry_after"] = exc.retry_after
        await self._send(payload)

    async def _send(self, payload: dict[str, Any]) -> None:
        try:
            await self.send(payload)
        except Exception as exc:
            raise ClientGone(str(exc)) from exc

    async def _send_quietly(self, payload: dict[str, Any]) -> None:
        try:
            await self.send(payload)
        except Exception as exc:
            log.info("chat %s: cannot send the error to the browser: %s", self.chat_id, exc)

    def _save_partial(self, reason: str) -> None:
        """Save the text written so far as an interrupted answer; save nothing without text."""
        if self.answer.parts:
            self._save(MessageStatus.INTERRUPTED, reason)

    def _save(
        self, status: MessageStatus, error: str | None, **counts: int | None
    ) -> Message | None:
        """Save the answer once; later calls return the first result."""
        # Runs in the event loop, without a thread, because it must also finish when
        # the task is being cancelled. It is one short insert.
        if self.answer.saved is not None:
            return self.answer.saved
        try:
            self.answer.saved = chats.add_message(
                self.db,
                self.user_id,
                self.chat_id,
                MessageRole.ASSISTANT,
                self.answer.text,
                model=self.answer.model,
                status=status,
                error=error,
                **counts,
            )
        except NotFound:
            log.info("chat %s was deleted during the answer; the answer is not saved", self.chat_id)
        return self.answer.saved


def storable_count(count: int | None) -> int | None:
    """Return a backend's token count, or None for one that the database cannot hold."""
    if count is None or 0 <= count <= chats.MAX_TOKEN_COUNT:
        return count
    return None


async def stopped_message(stream: AnswerStream) -> dict[str, Any]:
    """Return the `done` message that describes what was kept of a stopped answer, and why."""
    saved = stream.answer.saved
    return {
        "type": "done",
        "status": MessageStatus.INTERRUPTED.value,
        "message_id": saved.id if saved else None,
        "html": await render_answer(stream.answer.text),
        "reason": stream.cancel_reason,
    }
