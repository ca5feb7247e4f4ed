"""The chat web app: accounts pages, chats with streamed answers, health checks."""

from __future__ import annotations

from llmcloud.web.app import create_app

__all__ = ["create_app"]
