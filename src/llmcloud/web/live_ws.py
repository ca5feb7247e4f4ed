"""The live chat WebSocket, `/ws/chats/{chat_id}/live`: follow an answer streaming elsewhere.

A socket here receives the same JSON events as the chat socket that
generates the answer (see chat_ws.py), on this instance or on another one
that shares Redis: the current answer from its start, then every later
answer, until the browser closes it. It checks origin, session and chat
ownership as the chat socket does. Messages from the browser are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from llmcloud.auth.errors import CsrfFailed
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
    if not await ChatConversation(websocket, state, chat_id).authorize():
        return
    forward = asyncio.create_task(_forward(websocket, live_feed(websocket), chat_id))
    try:
        await _wait_for_close(websocket)
    finally:
        forward.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forward


async def _forward(websocket: WebSocket, feed: LiveFeed, chat_id: str) -> None:
    events = feed.watch(chat_id)
    try:
        async for event in events:
            await websocket.send_text(json.dumps(event, ensure_ascii=False))
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
