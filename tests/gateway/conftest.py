"""Fixtures of the gateway tests: fake backends, a running gateway and event helpers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from llmcloud.gateway import Backend, ChatEvent, Gateway, Token
from tests.gateway.fake_backend import FakeBackend

HELLO = [{"role": "user", "content": "Hello"}]

# Short intervals and timeouts, so that health changes and stalls show within a second.
FAST: dict[str, Any] = {
    "health_interval": 0.2,
    "health_timeout": 1.0,
    "connect_timeout": 1.0,
    "first_token_timeout": 5.0,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeBackend]]:
    """A factory of started fake backends, all stopped after the test."""
    started: list[FakeBackend] = []

    def start(models: tuple[str, ...] = ("fake-model",)) -> FakeBackend:
        server = FakeBackend(models).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def openai_backend(name: str, fake: FakeBackend, **fields: Any) -> Backend:
    return Backend(name=name, kind="openai", base_url=fake.url, **fields)


def ollama_backend(name: str, url: str, **fields: Any) -> Backend:
    return Backend(name=name, kind="ollama", base_url=url, **fields)


@asynccontextmanager
async def running_gateway(*backends: Backend, **options: Any) -> AsyncIterator[Gateway]:
    gateway = Gateway(backends, **{**FAST, **options})
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


async def collect(events: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [event async for event in events]


def answer_text(events: list[ChatEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, Token))


def closed_port_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> float:
    """Wait until `condition()` holds; return the seconds it took, or fail the test."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"condition not met within {seconds} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started
