"""Routing to the least busy backend, per-model queues, and closing streams early."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable

import pytest

from llmcloud.gateway import (
    ChatEvent,
    Done,
    Failed,
    Gateway,
    GatewayBusy,
    Queued,
    Started,
    Token,
)
from tests.gateway.conftest import HELLO, collect, openai_backend, running_gateway, wait_until
from tests.gateway.fake_backend import FakeBackend

pytestmark = pytest.mark.anyio

Fakes = Callable[..., FakeBackend]


def slow(fake: FakeBackend, tokens: int = 200, interval: float = 0.05) -> FakeBackend:
    """Make the fake send many tokens, one every `interval` seconds."""
    fake.tokens = [f" t{index}" for index in range(tokens)]
    fake.token_interval = interval
    return fake


async def until_started(events: AsyncGenerator[ChatEvent, None]) -> str:
    """Read events up to Started and return the backend's name."""
    async for event in events:
        if isinstance(event, Started):
            return event.backend
    raise AssertionError("the chat ended before it started")


def outstanding(gateway: Gateway) -> dict[str, int]:
    return {backend.name: backend.outstanding for backend in gateway.status().backends}


async def test_routes_to_least_busy_backend(fakes: Fakes) -> None:
    first, second = slow(fakes()), slow(fakes())
    async with running_gateway(
        openai_backend("first", first), openai_backend("second", second)
    ) as gw:
        busy = gw.chat("fake-model", HELLO)
        busy_backend = await until_started(busy)
        other = gw.chat("fake-model", HELLO)
        other_backend = await until_started(other)
        await busy.aclose()
        await other.aclose()

    assert {busy_backend, other_backend} == {"first", "second"}


async def test_routes_around_busy_backend(fakes: Fakes) -> None:
    busy_fake, idle_fake = slow(fakes()), fakes()
    backends = [openai_backend("busy", busy_fake), openai_backend("idle", idle_fake)]
    async with running_gateway(*backends) as gateway:
        busy = gateway.chat("fake-model", HELLO)
        assert await until_started(busy) == "busy"
        answers = [await collect(gateway.chat("fake-model", HELLO)) for _ in range(3)]
        await busy.aclose()

    assert [events[0] for events in answers] == [Started("idle")] * 3


async def test_weight_sets_share_of_requests(fakes: Fakes) -> None:
    heavy, light = slow(fakes()), slow(fakes())
    backends = [openai_backend("heavy", heavy, weight=2), openai_backend("light", light)]
    async with running_gateway(*backends) as gateway:
        chats = [gateway.chat("fake-model", HELLO) for _ in range(6)]
        for chat in chats:
            await until_started(chat)
        shares = outstanding(gateway)
        for chat in chats:
            await chat.aclose()

    assert shares == {"heavy": 4, "light": 2}


async def test_queue_reports_positions(fakes: Fakes) -> None:
    fake = slow(fakes())
    async with running_gateway(openai_backend("vllm", fake, max_parallel=1)) as gateway:
        first = gateway.chat("fake-model", HELLO)
        second = gateway.chat("fake-model", HELLO)
        third = gateway.chat("fake-model", HELLO)
        await until_started(first)

        assert await anext(second) == Queued(1)
        assert await anext(third) == Queued(2)
        assert gateway.status().queued == {"fake-model": 2}

        await first.aclose()
        assert await anext(second) == Started("vllm")
        assert await anext(third) == Queued(1)
        await second.aclose()
        await third.aclose()


async def test_full_queue_raises_503_at_once(fakes: Fakes) -> None:
    fake = slow(fakes())
    backend = openai_backend("vllm", fake, max_parallel=1)
    async with running_gateway(backend, max_queue_per_model=1) as gateway:
        running = gateway.chat("fake-model", HELLO)
        await until_started(running)
        waiting = gateway.chat("fake-model", HELLO)
        assert await anext(waiting) == Queued(1)

        started = time.monotonic()
        with pytest.raises(GatewayBusy) as caught:
            await anext(gateway.chat("fake-model", HELLO))
        elapsed = time.monotonic() - started
        await running.aclose()
        await waiting.aclose()

    assert elapsed < 0.5
    assert caught.value.status_code == 503
    assert caught.value.retry_after > 0
    assert "fake-model" in caught.value.message


async def test_zero_queue_rejects_when_backends_are_full(fakes: Fakes) -> None:
    fake = slow(fakes())
    async with running_gateway(
        openai_backend("vllm", fake, max_parallel=1), max_queue_per_model=0
    ) as gateway:
        running = gateway.chat("fake-model", HELLO)
        await until_started(running)
        with pytest.raises(GatewayBusy):
            await anext(gateway.chat("fake-model", HELLO))
        await running.aclose()


async def test_leaving_queue_moves_others_up(fakes: Fakes) -> None:
    fake = slow(fakes())
    async with running_gateway(openai_backend("vllm", fake, max_parallel=1)) as gateway:
        running = gateway.chat("fake-model", HELLO)
        await until_started(running)
        second = gateway.chat("fake-model", HELLO)
        third = gateway.chat("fake-model", HELLO)
        assert await anext(second) == Queued(1)
        assert await anext(third) == Queued(2)

        await second.aclose()

        assert await anext(third) == Queued(1)
        assert gateway.status().queued == {"fake-model": 1}
        await third.aclose()
        await running.aclose()
        assert gateway.status().queued == {}


async def test_closing_chat_closes_upstream(fakes: Fakes) -> None:
    fake = slow(fakes())
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        chat = gateway.chat("fake-model", HELLO)
        await until_started(chat)
        assert isinstance(await anext(chat), Token)

        await chat.aclose()

        assert await asyncio.to_thread(fake.client_left.wait, 2)
        assert outstanding(gateway) == {"vllm": 0}
    assert fake.tokens_sent < len(fake.tokens)


async def test_cancelling_consumer_task_closes_upstream(fakes: Fakes) -> None:
    fake = slow(fakes())
    tokens: list[str] = []

    async def consume(gateway: Gateway) -> None:
        async for event in gateway.chat("fake-model", HELLO):
            if isinstance(event, Token):
                tokens.append(event.text)

    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        task = asyncio.create_task(consume(gateway))
        await wait_until(lambda: len(tokens) >= 2)

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert await asyncio.to_thread(fake.client_left.wait, 2)
        assert outstanding(gateway) == {"vllm": 0}


async def test_cancelling_queued_chat_leaves_queue(fakes: Fakes) -> None:
    fake = slow(fakes())
    async with running_gateway(openai_backend("vllm", fake, max_parallel=1)) as gateway:
        running = gateway.chat("fake-model", HELLO)
        await until_started(running)
        task = asyncio.create_task(collect(gateway.chat("fake-model", HELLO)))
        await wait_until(lambda: gateway.status().queued == {"fake-model": 1})

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert gateway.status().queued == {}
        await running.aclose()


async def test_slot_is_free_when_done_arrives(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        chat = gateway.chat("fake-model", HELLO)
        async for event in chat:
            if isinstance(event, Done):
                break

        assert outstanding(gateway) == {"vllm": 0}
        await chat.aclose()


async def test_queued_request_takes_slot_of_finished_one(fakes: Fakes) -> None:
    fake = fakes()
    fake.token_interval = 0.02
    async with running_gateway(openai_backend("vllm", fake, max_parallel=2)) as gateway:
        results = await asyncio.gather(
            *(collect(gateway.chat("fake-model", HELLO)) for _ in range(8))
        )

    assert all(isinstance(events[-1], Done) for events in results)
    assert sum(1 for events in results if isinstance(events[0], Queued)) == 6
    assert len(fake.chat_requests()) == 8


async def test_dropping_chat_closes_upstream(fakes: Fakes) -> None:
    fake = slow(fakes())
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        async for event in gateway.chat("fake-model", HELLO):
            if isinstance(event, Token):
                break
        # Nothing refers to the chat any more, so asyncio closes it.

        assert await asyncio.to_thread(fake.client_left.wait, 2)
        await wait_until(lambda: outstanding(gateway) == {"vllm": 0})


async def test_closing_gateway_fails_queued_chat(fakes: Fakes) -> None:
    fake = slow(fakes())
    gateway = Gateway([openai_backend("vllm", fake, max_parallel=1)], health_interval=60)
    await gateway.start()
    running = gateway.chat("fake-model", HELLO)
    await until_started(running)
    queued = gateway.chat("fake-model", HELLO)
    assert await anext(queued) == Queued(1)

    await gateway.close()
    rest = await collect(queued)
    await running.aclose()

    assert len(rest) == 1
    assert isinstance(rest[0], Failed)
    assert rest[0].partial is False
