"""The live chat WebSocket, `/ws/chats/{chat_id}/live`: follow an answer streaming elsewhere.

A socket here receives the same JSON events as the chat socket that
generates the answer (see chat_ws.py), on this instance or on another one
that shares Redis: the current answer from its start, then every later
answer, until the browser closes it. The first event,
`{"type": "watching", "answering": true}`, says whether an answer is running;
with `false`, the events that follow belong to answers not yet begun. The
chat page uses it to show an answer that another tab is writing.

The socket checks origin, session and chat ownership as the chat socket
does. Before it forwards an event, it checks them again if
`ACCESS_CHECK_SECONDS` have passed since the last check. Once the account
logs out or the chat is deleted, the socket gets an error and closes with
the chat socket's codes. Messages from the browser are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from llmcloud.auth.errors import CsrfFailed, ServiceError
from llmcloud.web import chat_ws
from llmcloud.web.chat_ws import POLICY_VIOLATION, ChatConversation
from llmcloud.web.deps import web_state
from llmcloud.web.live import LiveFeed
from llmcloud.web.security import check_same_origin

log = logging.getLogger("llmcloud.web")

router = APIRouter()

INTERNAL_ERROR_CODE = 1011


def live_feed(websocket: WebSocket) -> LiveFeed:
    feed: LiveFeed = websocket.app.state.live
    return feed


@router.websocket("/ws/chats/{chat_id}/live")
async def live_socket(websocket: WebSocket, chat_id: str) -> None:
    state = web_state(websocket)
    try:
        if not check_same_origin(websocket, state.settings):
            raise CsrfFailed("WebSocket handshake without an Origin header")
    except CsrfFailed as exc:
        log.info("live chat WebSocket rejected: %s", exc.message)
        await websocket.close(code=POLICY_VIOLATION)
        return

    await websocket.accept()
    conversation = ChatConversation(websocket, state, chat_id)
    if not await conversation.authorize():
        return
    forward = asyncio.create_task(_forward(conversation, live_feed(websocket), chat_id))
    try:
        await _wait_for_close(websocket)
    finally:
        forward.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forward


async def _forward(conversation: ChatConversation, feed: LiveFeed, chat_id: str) -> None:
    websocket = conversation.websocket
    events = feed.watch(chat_id)
    checked = time.monotonic()
    try:
        async for event in events:
            if event["type"] == "watching" and not event["answering"]:
                # An answer can hold the chat's claim before its first event. The claim
                # ends before the answer's last event, which this watcher then receives.
                claims = conversation.websocket.app.state.answer_claims
                event = {**event, "answering": await claims.is_claimed(chat_id)}
            if time.monotonic() - checked >= chat_ws.ACCESS_CHECK_SECONDS:
                await asyncio.to_thread(conversation.check_access)
                checked = time.monotonic()
            await websocket.send_text(json.dumps(event, ensure_ascii=False))
    except ServiceError as exc:
        log.info("chat %s: live watcher closed: %s", chat_id, exc.message)
        await conversation.send({"type": "error", "message": exc.message, "partial": False})
        await websocket.close(code=4000 + exc.status_code)
    except (WebSocketDisconnect, RuntimeError) as exc:
        log.info("chat %s: live watcher left: %s", chat_id, exc)
    except (RedisError, OSError) as exc:
        log.warning("chat %s: cannot read live events from Redis: %s", chat_id, exc)
        await websocket.close(code=INTERNAL_ERROR_CODE, reason="live events are unavailable")
    finally:
        await events.aclose()


async def _wait_for_close(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
