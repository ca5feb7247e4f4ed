"""The chat WebSocket under /ws/chats/{chat_id}."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
