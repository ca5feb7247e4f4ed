"""Live chat streams: the events of an answer, fanned out to every watcher of the chat.

The instance that generates an answer publishes each event of it that it
sends to its own chat socket (`queued`, `started`, `token`, `done`, `error`),
and a `done` event when the answer is stopped or its socket closes. Other
sockets, on this instance or another, watch the chat through
`/ws/chats/{chat_id}/live` and receive the same events, so a chat streaming
on one instance can be followed from another.

Without `redis_url` the feed is in-process (`LocalFeed`) and reaches
watchers on the same instance only. With it, `RedisFeed` keeps the events of
each chat's current answer in a Redis stream, `llmcloud:live:<chat_id>`. The
first event of an answer replaces the previous answer's stream, so a watcher
that connects mid-answer first receives the answer from its start. A stream
expires `FINISHED_TTL_SECONDS` after its answer ends, and
`IDLE_TTL_SECONDS` after its last event if the publisher dies.

Publishing never fails a chat: an unreachable Redis is logged (once per
outage) and the answer still goes to its own socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("llmcloud.web")

SendJson = Callable[[dict[str, Any]], Awaitable[None]]

TERMINAL_TYPES = frozenset({"done", "error"})
FINISHED_TTL_SECONDS = 60
IDLE_TTL_SECONDS = 600
MAX_EVENTS_PER_ANSWER = 100_000
READ_BLOCK_MILLISECONDS = 5_000
_LOCAL_QUEUE_SIZE = 10_000


class LiveFeed(Protocol):
    async def publish(self, chat_id: str, event: dict[str, Any], *, first: bool) -> None:
        """Publish one event of the chat's answer; `first` starts a new answer."""

    def watch(self, chat_id: str) -> AsyncGenerator[dict[str, Any], None]:
        """Yield the chat's events: the current answer from its start, then every later one.

        The first event, `{"type": "watching", "answering": bool}`, comes once
        the watcher receives every later event, and says whether an answer had
        started and not ended by then.
        """

    async def close(self) -> None: ...


def live_feed_for(redis_url: str | None) -> LiveFeed:
    """Return a Redis-backed feed when `redis_url` is set, else an in-process one."""
    if redis_url:
        return RedisFeed(aioredis.Redis.from_url(redis_url))
    return LocalFeed()


class Publisher:
    """Sends one answer's events to its own socket and publishes them to the feed."""

    def __init__(self, feed: LiveFeed, chat_id: str, send: SendJson) -> None:
        self.feed = feed
        self.chat_id = chat_id
        self.send = send
        self._first = True

    async def __call__(self, event: dict[str, Any]) -> None:
        await self.publish(event)
        await self.send(event)

    async def publish(self, event: dict[str, Any]) -> None:
        """Publish the event to watchers only, as for the end of an answer that was stopped."""
        first, self._first = self._first, False
        await self.feed.publish(self.chat_id, event, first=first)


class LocalFeed:
    """Fans events out to watchers in this process only."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._current: dict[str, list[dict[str, Any]]] = {}

    async def publish(self, chat_id: str, event: dict[str, Any], *, first: bool) -> None:
        if first or chat_id not in self._current:
            self._current[chat_id] = []
        answer = self._current[chat_id]
        answer.append(event)
        if event.get("type") in TERMINAL_TYPES:
            del self._current[chat_id]
        for queue in self._watchers.get(chat_id, ()):
            if queue.full():
                log.warning("chat %s: a live watcher fell behind; dropping an event", chat_id)
                continue
            queue.put_nowait(event)

    async def watch(self, chat_id: str) -> AsyncGenerator[dict[str, Any], None]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_LOCAL_QUEUE_SIZE)
        for event in self._current.get(chat_id, []):
            queue.put_nowait(event)
        self._watchers[chat_id].add(queue)
        try:
            yield watching_event(chat_id in self._current)
            while True:
                yield await queue.get()
        finally:
            self._watchers[chat_id].discard(queue)
            if not self._watchers[chat_id]:
                del self._watchers[chat_id]

    async def close(self) -> None:
        self._watchers.clear()
        self._current.clear()


class RedisFeed:
    """Fans events out through one Redis stream per chat, shared by every instance."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._failing = False

    @staticmethod
    def key(chat_id: str) -> str:
        return f"llmcloud:live:{chat_id}"

    async def publish(self, chat_id: str, event: dict[str, Any], *, first: bool) -> None:
        key = self.key(chat_id)
        ttl = FINISHED_TTL_SECONDS if event.get("type") in TERMINAL_TYPES else IDLE_TTL_SECONDS
        try:
            async with self.client.pipeline(transaction=True) as pipeline:
                if first:
                    pipeline.delete(key)
                pipeline.xadd(
                    key,
                    {"event": json.dumps(event)},
                    maxlen=MAX_EVENTS_PER_ANSWER,
                    approximate=True,
                )
                pipeline.expire(key, ttl)
                await pipeline.execute()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning(
                    "chat %s: cannot publish to Redis, live watchers miss events: %s", chat_id, exc
                )
            self._failing = True
            return
        if self._failing:
            log.info("publishing live chat events to Redis works again")
        self._failing = False

    async def watch(self, chat_id: str) -> AsyncGenerator[dict[str, Any], None]:
        key = self.key(chat_id)
        last_id, answering = await self._start(key)
        yield watching_event(answering)
        while True:
            # redis-py types replies loosely: [[key, [(entry id, {field: value})]]].
            replies: Any = await self.client.xread({key: last_id}, block=READ_BLOCK_MILLISECONDS)
            for _stream, entries in replies or []:
                for entry_id, fields in entries:
                    last_id = _text(entry_id)
                    yield json.loads(_text(fields[b"event"]))

    async def _start(self, key: str) -> tuple[str, bool]:
        """Return the id to read after and whether an answer is running.

        The id is the start of a running answer, else the newest event.
        """
        newest: Any = await self.client.xrevrange(key, count=1)
        if not newest:
            return "0-0", False
        entry_id, fields = newest[0]
        event = json.loads(_text(fields[b"event"]))
        if event.get("type") in TERMINAL_TYPES:
            return _text(entry_id), False
        return "0-0", True

    async def close(self) -> None:
        await self.client.aclose()


def watching_event(answering: bool) -> dict[str, Any]:
    return {"type": "watching", "answering": answering}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
