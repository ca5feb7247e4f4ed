"""Health checks, merged model lists, the status snapshot and changes to the backend list."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from llmcloud.gateway import (
    Backend,
    Done,
    Failed,
    Gateway,
    InvalidBackends,
    ModelInfo,
    NoBackendAvailable,
    Started,
)
from tests.gateway.conftest import (
    HELLO,
    collect,
    ollama_backend,
    openai_backend,
    running_gateway,
    wait_until,
)
from tests.gateway.fake_backend import FakeBackend

pytestmark = pytest.mark.anyio

Fakes = Callable[..., FakeBackend]


def healthy(gateway: Gateway, name: str) -> bool:
    return any(b.healthy for b in gateway.status().backends if b.name == name)


async def test_start_checks_every_backend_once(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        status = gateway.status().backends[0]

    assert status.healthy is True
    assert status.models == ("fake-model",)
    assert status.last_check is not None
    assert abs(status.last_check - time.time()) < 10


async def test_dead_backend_leaves_rotation_within_seconds(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    async with running_gateway(
        openai_backend("first", first), openai_backend("second", second)
    ) as gw:
        first.stop()
        seconds = await wait_until(lambda: not healthy(gw, "first"))
        events = await collect(gw.chat("fake-model", HELLO))

    assert seconds < 2
    assert events[0] == Started("second")
    assert first.chat_requests() == []


async def test_slow_health_check_keeps_streaming_backend(fakes: Fakes) -> None:
    fake = fakes()
    fake.tokens = ["token "] * 16
    fake.token_interval = 0.1
    async with running_gateway(
        openai_backend("vllm", fake), health_interval=0.1, health_timeout=0.3
    ) as gateway:
        fake.stall_models = True
        seen: list[bool] = []
        async for event in gateway.chat("fake-model", HELLO):
            seen.append(healthy(gateway, "vllm"))
            last = event
        health_checks = [request for request in fake.requests if request.method == "GET"]

    assert isinstance(last, Done)
    assert all(seen)
    # The one at start-up, and at least one that timed out during the stream.
    assert len(health_checks) >= 2


async def test_slow_health_check_without_streams_fails(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(
        openai_backend("vllm", fake), health_interval=0.1, health_timeout=0.3
    ) as gateway:
        fake.stall_models = True
        await wait_until(lambda: not healthy(gateway, "vllm"))
        error = gateway.status().backends[0].last_error

    assert error == "health check timed out after 0.3 s"


async def test_backend_returns_when_healthy_again(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        fake.models_status = 500
        await wait_until(lambda: not healthy(gateway, "vllm"))
        error = gateway.status().backends[0].last_error

        fake.models_status = 200
        seconds = await wait_until(lambda: healthy(gateway, "vllm"))
        events = await collect(gateway.chat("fake-model", HELLO))

    assert error is not None
    assert "HTTP 500" in error
    assert seconds < 2
    assert isinstance(events[-1], Done)


async def test_failing_requests_take_backend_out_of_rotation(fakes: Fakes) -> None:
    fake = fakes()
    fake.chat_status = 502
    backend = openai_backend("vllm", fake)
    async with running_gateway(backend, health_interval=60, failures_before_unhealthy=2) as gw:
        answers = [await collect(gw.chat("fake-model", HELLO)) for _ in range(2)]
        with pytest.raises(NoBackendAvailable):
            await anext(gw.chat("fake-model", HELLO))
        status = gw.status().backends[0]

    assert [type(events[-1]) for events in answers] == [Failed, Failed]
    assert len(fake.chat_requests()) == 2
    assert status.healthy is False
    assert status.consecutive_failures == 2


async def test_models_are_merged_across_backends(fakes: Fakes) -> None:
    first, second = fakes(("a:1", "b:1")), fakes(("b:1", "c:1"))
    async with running_gateway(
        ollama_backend("first", first.url), openai_backend("second", second)
    ) as gw:
        models = await gw.models()

    assert models == [
        ModelInfo("a:1", ("first",)),
        ModelInfo("b:1", ("first", "second")),
        ModelInfo("c:1", ("second",)),
    ]


async def test_models_leave_out_unhealthy_backends(fakes: Fakes) -> None:
    first, second = fakes(("a:1",)), fakes(("b:1",))
    async with running_gateway(
        openai_backend("first", first), openai_backend("second", second)
    ) as gw:
        second.stop()
        await wait_until(lambda: not healthy(gw, "second"))
        models = await gw.models()

    assert models == [ModelInfo("a:1", ("first",))]


async def test_status_reports_config_and_state(fakes: Fakes) -> None:
    fake = fakes()
    backend = openai_backend("vllm", fake, weight=3, max_parallel=8, api_key="sk-hidden")
    async with running_gateway(backend) as gateway:
        await collect(gateway.chat("fake-model", HELLO))
        status = gateway.status()

    entry = status.backends[0]
    assert (entry.name, entry.kind, entry.base_url) == ("vllm", "openai", fake.url)
    assert (entry.weight, entry.max_parallel, entry.enabled) == (3, 8, True)
    assert entry.outstanding == 0
    assert entry.consecutive_failures == 0
    assert entry.last_error is None
    assert "sk-hidden" not in repr(status)
    assert status.queued == {}


async def test_disabled_backend_gets_no_requests(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    backends = [openai_backend("first", first, enabled=False), openai_backend("second", second)]
    async with running_gateway(*backends) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    assert events[0] == Started("second")
    assert first.requests == []


async def test_set_backends_adds_and_removes(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    async with running_gateway(openai_backend("first", first)) as gateway:
        gateway.set_backends([openai_backend("first", first), openai_backend("second", second)])
        await wait_until(lambda: healthy(gateway, "second"))

        gateway.set_backends([openai_backend("second", second)])
        names = [backend.name for backend in gateway.status().backends]
        events = await collect(gateway.chat("fake-model", HELLO))

    assert names == ["second"]
    assert events[0] == Started("second")


async def test_set_backends_keeps_state_of_unchanged_backend(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    async with running_gateway(openai_backend("first", first), health_interval=60) as gateway:
        gateway.set_backends([openai_backend("first", first), openai_backend("second", second)])

        assert healthy(gateway, "first")


async def test_removed_backend_finishes_its_stream(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    first.tokens = ["a", "b", "c"]
    first.token_interval = 0.1
    async with running_gateway(openai_backend("first", first)) as gateway:
        chat = gateway.chat("fake-model", HELLO)
        assert await anext(chat) == Started("first")
        gateway.set_backends([openai_backend("second", second)])
        events = await collect(chat)

    assert isinstance(events[-1], Done)


async def test_set_backends_rejects_duplicate_names(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        with pytest.raises(InvalidBackends, match="'vllm' is used twice"):
            gateway.set_backends([openai_backend("vllm", fake), openai_backend("vllm", fake)])

        assert [backend.name for backend in gateway.status().backends] == ["vllm"]


async def test_empty_backend_list_answers_503() -> None:
    async with running_gateway() as gateway:
        with pytest.raises(NoBackendAvailable, match="no backend is enabled"):
            await anext(gateway.chat("fake-model", HELLO))


def test_gateway_rejects_bad_timing() -> None:
    with pytest.raises(ValueError, match="health_interval must be more than 0, not 0"):
        Gateway([Backend(name="a", base_url="http://127.0.0.1:1")], health_interval=0)
