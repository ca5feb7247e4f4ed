"""The gateway queue shared through Redis: two gateways, as in two web instances, on one backend."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis

from llmcloud.gateway import Backend, ChatEvent, Gateway, GatewayBusy, Queued, Started
from llmcloud.gateway.shared_queue import SharedQueue
from tests.deploy.conftest import free_port
from tests.gateway.fake_backend import FakeBackend

HELLO = [{"role": "user", "content": "Hello"}]
EVENT_TIMEOUT_SECONDS = 10.0
FAST: dict[str, Any] = {
    "health_interval": 0.2,
    "health_timeout": 1.0,
    "connect_timeout": 1.0,
    "first_token_timeout": 5.0,
}


@pytest.fixture
def model() -> str:
    """A model name of this test alone, so that no other run's tickets share its queue."""
    return f"queue-test-{secrets.token_hex(6)}"


@pytest.fixture
def slow_backend(model: str) -> Iterator[FakeBackend]:
    """A backend whose responses last long enough to keep its one slot taken."""
    backend = FakeBackend((model,))
    backend.tokens = [f" t{index}" for index in range(400)]
    backend.token_interval = 0.05
    backend.start()
    yield backend
    backend.stop()


@asynccontextmanager
async def gateways(
    count: int, backend: FakeBackend, redis_url: str, **options: Any
) -> AsyncIterator[list[Gateway]]:
    """Start `count` gateways that share Redis and one backend of max_parallel 1."""
    config = Backend(name="shared", kind="openai", base_url=backend.url, max_parallel=1)
    async with AsyncExitStack() as stack:
        started = []
        for _ in range(count):
            gateway = Gateway([config], redis_url=redis_url, **{**FAST, **options})
            await gateway.start()
            stack.push_async_callback(gateway.close)
            started.append(gateway)
        yield started


async def next_event(events: AsyncGenerator[ChatEvent, None]) -> ChatEvent:
    return await asyncio.wait_for(anext(events), EVENT_TIMEOUT_SECONDS)


async def until_started(events: AsyncGenerator[ChatEvent, None]) -> str:
    while True:
        event = await next_event(events)
        if isinstance(event, Started):
            return event.backend


def test_position_counts_requests_of_both_instances(
    redis_url: str, slow_backend: FakeBackend, model: str
) -> None:
    async def scenario() -> list[ChatEvent]:
        async with gateways(2, slow_backend, redis_url) as (first, second):
            running = first.chat(model, HELLO)
            await until_started(running)
            waiting_first = first.chat(model, HELLO)
            waiting_second = second.chat(model, HELLO)
            seen = [await next_event(waiting_first), await next_event(waiting_second)]

            await running.aclose()
            seen += [await next_event(waiting_first), await next_event(waiting_second)]
            await waiting_first.aclose()
            seen.append(await next_event(waiting_second))
            await waiting_second.aclose()
            return seen

    events = asyncio.run(scenario())

    assert events[0] == Queued(1)
    assert events[1] == Queued(2)
    assert events[2] == Started("shared")
    assert events[3] == Queued(1)
    assert events[4] == Started("shared")


def test_full_shared_queue_is_busy_on_either_instance(
    redis_url: str, slow_backend: FakeBackend, model: str
) -> None:
    async def scenario() -> tuple[list[ChatEvent], list[GatewayBusy]]:
        async with gateways(2, slow_backend, redis_url, max_queue_per_model=2) as (first, second):
            running = second.chat(model, HELLO)
            await until_started(running)
            waiting = [first.chat(model, HELLO), second.chat(model, HELLO)]
            positions = [await next_event(chat) for chat in waiting]

            rejections = []
            for gateway in (first, second):
                try:
                    await next_event(gateway.chat(model, HELLO))
                except GatewayBusy as exc:
                    rejections.append(exc)
            for chat in [running, *waiting]:
                await chat.aclose()
            return positions, rejections

    positions, rejections = asyncio.run(scenario())

    assert positions == [Queued(1), Queued(2)]
    assert len(rejections) == 2
    assert all(rejection.status_code == 503 for rejection in rejections)
    assert all("across the web instances" in rejection.message for rejection in rejections)


def test_backend_slots_are_shared_by_instances(
    redis_url: str, slow_backend: FakeBackend, model: str
) -> None:
    async def scenario() -> ChatEvent:
        async with gateways(2, slow_backend, redis_url) as (first, second):
            running = first.chat(model, HELLO)
            await until_started(running)
            other = second.chat(model, HELLO)
            event = await next_event(other)
            await other.aclose()
            await running.aclose()
            return event

    assert asyncio.run(scenario()) == Queued(1)
    assert len(slow_backend.chat_requests()) == 1


def test_tickets_of_stopped_instance_expire(
    redis_url: str, slow_backend: FakeBackend, model: str
) -> None:
    """A ticket that its instance stops refreshing leaves the queue after the ticket TTL."""

    async def scenario() -> tuple[ChatEvent, ChatEvent]:
        async with gateways(1, slow_backend, redis_url) as (gateway,):
            running = gateway.chat(model, HELLO)
            await until_started(running)
            abandoned = SharedQueue.from_url(
                redis_url,
                gateway._dispatcher,
                max_queue_per_model=8,
                busy_retry_after=1,
                ticket_ttl=0.5,
            )
            # Queued but never refreshed, as by an instance that crashed.
            await abandoned.submit(model)
            later = gateway.chat(model, HELLO)
            before = await next_event(later)
            after = await next_event(later)
            await later.aclose()
            await running.aclose()
            await abandoned.client.aclose()
            return before, after

    before, after = asyncio.run(scenario())

    assert before == Queued(2)
    assert after == Queued(1)


def test_unreachable_redis_queues_per_instance(
    slow_backend: FakeBackend, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    down_url = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> list[ChatEvent]:
        async with gateways(1, slow_backend, down_url) as (gateway,):
            running = gateway.chat(model, HELLO)
            await until_started(running)
            waiting = gateway.chat(model, HELLO)
            event = await next_event(waiting)
            await running.aclose()
            started = await until_started(waiting)
            await waiting.aclose()
            return [event, Started(started)]

    with caplog.at_level(logging.WARNING, logger="llmcloud.gateway"):
        events = asyncio.run(scenario())

    assert events == [Queued(1), Started("shared")]
    warnings = [record for record in caplog.records if "shared queue" in record.message]
    assert len(warnings) == 1


def test_finished_chats_leave_no_tickets(
    redis_url: str, slow_backend: FakeBackend, model: str
) -> None:
    async def scenario() -> None:
        async with gateways(2, slow_backend, redis_url) as (first, second):
            running = first.chat(model, HELLO)
            await until_started(running)
            waiting = second.chat(model, HELLO)
            await next_event(waiting)
            await waiting.aclose()
            await running.aclose()

    asyncio.run(scenario())

    client = redis.Redis.from_url(redis_url)
    assert client.zcard(f"llmcloud:gateway:waiting:{model}") == 0
    assert client.zcard(f"llmcloud:gateway:running:{slow_backend.url}") == 0


def test_queue_lengths_count_every_instance(
    redis_url: str, slow_backend: FakeBackend, model: str
) -> None:
    async def scenario() -> list[tuple[dict[str, int], bool]]:
        async with gateways(2, slow_backend, redis_url) as (first, second):
            running = first.chat(model, HELLO)
            await until_started(running)
            waiting = [first.chat(model, HELLO), second.chat(model, HELLO)]
            for chat in waiting:
                await next_event(chat)
            lengths = [await first.queue_lengths(), await second.queue_lengths()]
            for chat in [running, *waiting]:
                await chat.aclose()
            return lengths

    lengths = asyncio.run(scenario())

    assert lengths == [({model: 2}, True), ({model: 2}, True)]


def test_queue_lengths_without_redis_are_this_instance_only(
    slow_backend: FakeBackend, model: str
) -> None:
    down_url = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> tuple[dict[str, int], bool]:
        async with gateways(1, slow_backend, down_url) as (gateway,):
            running = gateway.chat(model, HELLO)
            await until_started(running)
            waiting = gateway.chat(model, HELLO)
            await next_event(waiting)
            lengths = await gateway.queue_lengths()
            for chat in (running, waiting):
                await chat.aclose()
            return lengths

    assert asyncio.run(scenario()) == ({model: 1}, False)
