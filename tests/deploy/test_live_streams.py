"""Live chat streams: an answer generated on one web instance, watched on another through Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from llmcloud.web.live import LiveFeed, LocalFeed, RedisFeed, live_feed_for
from tests.deploy.conftest import free_port, start_web
from tests.gateway.fake_backend import FakeBackend

SHARED_KEY = "3c" * 32
PASSWORD = "correct horse battery"
FAKE_MODEL = "fake-model"
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(params=["local", "redis"])
def feed_factory(request: pytest.FixtureRequest) -> Any:
    """A factory of two feeds that share one fan-out, as two instances share Redis.

    Call it inside the event loop that uses the feeds, and close them there.
    """
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make() -> tuple[LiveFeed, LiveFeed]:
        if url is None:
            shared = LocalFeed()
            return shared, shared
        return live_feed_for(url), live_feed_for(url)

    return make


async def _collect(events: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    collected = []
    async for event in events:
        collected.append(event)
        if len(collected) == count:
            break
    return collected


def _chat_id() -> str:
    return f"test-{secrets.token_hex(8)}"


def test_watcher_joining_mid_answer_gets_whole_answer(feed_factory: Any) -> None:
    async def scenario() -> list[dict[str, Any]]:
        publisher, watcher = feed_factory()
        chat_id = _chat_id()
        await publisher.publish(chat_id, {"type": "started"}, first=True)
        await publisher.publish(chat_id, {"type": "token", "text": "Hel"}, first=False)
        events = watcher.watch(chat_id)
        collecting = asyncio.create_task(asyncio.wait_for(_collect(events, 5), 10))
        await asyncio.sleep(0.2)
        await publisher.publish(chat_id, {"type": "token", "text": "lo"}, first=False)
        await publisher.publish(chat_id, {"type": "done", "status": "complete"}, first=False)
        collected = await collecting
        await events.aclose()
        await publisher.close()
        await watcher.close()
        return collected

    events = asyncio.run(scenario())

    assert events[0] == {"type": "watching", "answering": True}
    assert [event["type"] for event in events[1:]] == ["started", "token", "token", "done"]
    assert "".join(event.get("text", "") for event in events) == "Hello"


def test_watcher_after_answer_skips_finished_answer(feed_factory: Any) -> None:
    async def scenario() -> list[dict[str, Any]]:
        publisher, watcher = feed_factory()
        chat_id = _chat_id()
        await publisher.publish(chat_id, {"type": "token", "text": "old"}, first=True)
        await publisher.publish(chat_id, {"type": "done", "status": "complete"}, first=False)
        events = watcher.watch(chat_id)
        collecting = asyncio.create_task(asyncio.wait_for(_collect(events, 3), 10))
        await asyncio.sleep(0.2)
        await publisher.publish(chat_id, {"type": "token", "text": "new"}, first=True)
        await publisher.publish(chat_id, {"type": "done", "status": "complete"}, first=False)
        collected = await collecting
        await events.aclose()
        await publisher.close()
        await watcher.close()
        return collected

    events = asyncio.run(scenario())

    assert events[0] == {"type": "watching", "answering": False}
    assert events[1] == {"type": "token", "text": "new"}
    assert events[2]["type"] == "done"


def test_redis_feed_publish_survives_unreachable_redis(caplog: pytest.LogCaptureFixture) -> None:
    feed = live_feed_for(f"redis://127.0.0.1:{free_port()}/0")
    assert isinstance(feed, RedisFeed)

    async def scenario() -> None:
        for _ in range(3):
            await feed.publish("chat", {"type": "token", "text": "x"}, first=False)
        await feed.close()

    with caplog.at_level(logging.WARNING, logger="llmcloud.web"):
        asyncio.run(scenario())

    warnings = [record for record in caplog.records if "cannot publish to Redis" in record.message]
    assert len(warnings) == 1


def _sign_up_and_create_chat(client: httpx.Client, url: str) -> str:
    signup = client.post(
        f"{url}/signup",
        data={"username": "alice", "password": PASSWORD, "password_confirm": PASSWORD},
        headers={"Origin": url},
    )
    assert signup.status_code == 303
    match = _CSRF_FIELD.search(client.get(f"{url}/chats").text)
    assert match is not None
    created = client.post(
        f"{url}/chats", data={"csrf_token": match.group(1)}, headers={"Origin": url}
    )
    assert created.status_code == 303
    return str(created.headers["location"]).rsplit("/", 1)[-1]


def _socket(url: str, path: str, client: httpx.Client) -> ClientConnection:
    cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    return connect(
        url.replace("http://", "ws://") + path,
        additional_headers={"Origin": url, "Cookie": cookies},
        open_timeout=10,
    )


def _read_until_end(socket: ClientConnection) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(socket.recv(timeout=15))
        events.append(event)
        if event["type"] in ("done", "error"):
            return events


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["type"] == "token")


@pytest.fixture
def slow_backend() -> Iterator[FakeBackend]:
    backend = FakeBackend((FAKE_MODEL,))
    backend.tokens = ["One", " two", " three", " four", " five", " six"]
    backend.token_interval = 0.3
    backend.start()
    yield backend
    backend.stop()


def test_chat_on_one_instance_is_watched_on_other(
    tmp_path: Path, postgres_url: str, redis_url: str, slow_backend: FakeBackend
) -> None:
    settings = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "session_secret_key": SHARED_KEY,
        "web_default_model": FAKE_MODEL,
        "gateway_backends": json.dumps(
            [{"name": "fake", "kind": "openai", "base_url": slow_backend.url}]
        ),
    }
    first = start_web(tmp_path / "first", **settings)
    second = start_web(tmp_path / "second", **settings)
    try:
        with httpx.Client(timeout=10.0) as client:
            chat_id = _sign_up_and_create_chat(client, first.url)
            with _socket(first.url, f"/ws/chats/{chat_id}", client) as chat:
                chat.send(json.dumps({"type": "send", "content": "Count", "model": FAKE_MODEL}))
                opening = []
                while not any(event["type"] == "token" for event in opening):
                    opening.append(json.loads(chat.recv(timeout=15)))
                with _socket(second.url, f"/ws/chats/{chat_id}/live", client) as watcher:
                    watched = _read_until_end(watcher)
                answered = opening + _read_until_end(chat)
    finally:
        first.stop()
        second.stop()

    assert _text(answered) == "One two three four five six"
    assert _text(watched) == _text(answered)
    assert watched[-1]["type"] == "done"
    assert watched[-1]["status"] == "complete"
