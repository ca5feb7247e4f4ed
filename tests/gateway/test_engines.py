"""The gateway in front of real llmcloud engines on loopback, with the bundled model."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from llmcloud.gateway import ChatEvent, Done, Failed, Gateway, Started
from tests.conftest import BUNDLED_MODEL, RunningServer, start_engine
from tests.gateway.conftest import (
    answer_text,
    collect,
    ollama_backend,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.anyio

ENGINE_KEY = "engine-test-key"
COUNT = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
SHORT = {"num_predict": 8, "temperature": 0}
# The engines share the machine's cores with the test and whatever else runs, so a first
# token may take seconds.
SLOW_MACHINE = {"first_token_timeout": 60.0}


@pytest.fixture(scope="module")
def keyed_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An engine that requires ENGINE_KEY as its Bearer token."""
    server = start_engine(tmp_path_factory.mktemp("keyed-engine"), engine_token=ENGINE_KEY)
    yield server
    server.stop()


async def test_chat_through_engine(engine_url: str) -> None:
    async with running_gateway(ollama_backend("engine", engine_url), **SLOW_MACHINE) as gateway:
        events = await collect(gateway.chat(BUNDLED_MODEL, COUNT, options=SHORT))

    assert events[0] == Started("engine")
    assert answer_text(events)
    done = events[-1]
    assert isinstance(done, Done)
    assert done.done_reason in ("stop", "length")
    assert done.prompt_tokens is not None
    assert done.prompt_tokens > 0
    assert done.completion_tokens is not None
    assert 0 < done.completion_tokens <= 8
    assert done.durations.eval_ns is not None


async def test_chat_through_engine_openai_api(engine_url: str) -> None:
    backend = ollama_backend("engine", engine_url).model_copy(update={"kind": "openai"})
    async with running_gateway(backend, **SLOW_MACHINE) as gateway:
        events = await collect(gateway.chat(BUNDLED_MODEL, COUNT, options=SHORT))

    assert answer_text(events)
    done = events[-1]
    assert isinstance(done, Done)
    assert done.completion_tokens is not None
    assert 0 < done.completion_tokens <= 8


async def test_models_of_engine(engine_url: str) -> None:
    async with running_gateway(ollama_backend("engine", engine_url), **SLOW_MACHINE) as gateway:
        models = await gateway.models()

    assert BUNDLED_MODEL in [model.name for model in models]


async def test_engine_gets_bearer_key_and_keep_alive(keyed_engine: RunningServer) -> None:
    backend = ollama_backend("engine", keyed_engine.url, api_key=ENGINE_KEY)
    async with running_gateway(backend, keep_alive="1h", **SLOW_MACHINE) as gateway:
        events = await collect(gateway.chat(BUNDLED_MODEL, COUNT, options=SHORT))

    assert isinstance(events[-1], Done)
    headers = {"Authorization": f"Bearer {ENGINE_KEY}"}
    async with httpx.AsyncClient(base_url=keyed_engine.url, headers=headers) as client:
        loaded = (await client.get("/api/ps")).json()["models"]
    expires = datetime.fromisoformat(loaded[0]["expires_at"].replace("Z", "+00:00"))
    # The engine's default keep_alive is 5 minutes; the gateway's 1h must have replaced it.
    assert (expires - datetime.now(UTC)).total_seconds() > 3000


async def test_engine_without_key_stays_out_of_rotation(keyed_engine: RunningServer) -> None:
    async with running_gateway(ollama_backend("engine", keyed_engine.url)) as gateway:
        status = gateway.status().backends[0]

    assert status.healthy is False
    assert "HTTP 401" in (status.last_error or "")


async def _chat_and_note_start(gateway: Gateway, started: list[str]) -> list[ChatEvent]:
    events: list[ChatEvent] = []
    async for event in gateway.chat(BUNDLED_MODEL, COUNT, options={"num_predict": 40}):
        events.append(event)
        if isinstance(event, Started):
            started.append(event.backend)
    return events


async def test_stopping_engine_under_load_fails_no_unstarted_chat(tmp_path: Path) -> None:
    engines = {
        name: start_engine(tmp_path / name, engine_num_parallel=2, engine_threads=1)
        for name in ("first", "second")
    }
    backends = [ollama_backend(name, e.url, max_parallel=2) for name, e in engines.items()]
    started: list[str] = []
    try:
        async with running_gateway(*backends, health_interval=0.5, **SLOW_MACHINE) as gateway:
            chats = [asyncio.create_task(_chat_and_note_start(gateway, started)) for _ in range(10)]
            await wait_until(lambda: "first" in started, seconds=60)
            await asyncio.to_thread(engines["first"].stop)
            results = await asyncio.gather(*chats)
            first_status = next(b for b in gateway.status().backends if b.name == "first")
    finally:
        for server in engines.values():
            server.stop()

    unstarted_failures = [
        events for events in results if isinstance(events[-1], Failed) and not events[-1].partial
    ]
    assert unstarted_failures == []
    assert sum(1 for events in results if isinstance(events[-1], Done)) >= 8
    assert "second" in started
    assert first_status.healthy is False


def _spawn_engine(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `llmcloud engine` as its own process, so that the test can kill it with SIGKILL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(data_dir / "config"),
        "LLMCLOUD_DATA_DIR": str(data_dir),
        "LLMCLOUD_ENGINE_NUM_PARALLEL": "2",
        "LLMCLOUD_ENGINE_NUM_CTX": "1024",
        # One thread: llama.cpp's threads spin while they wait for each other, which turns
        # slow when other processes take the cores.
        "LLMCLOUD_ENGINE_THREADS": "1",
        "LLMCLOUD_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "llmcloud", "engine", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, f"http://127.0.0.1:{port}"


async def _wait_for_engine(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(f"engine process exited with {process.returncode}")
            try:
                if (await client.get("/api/tags")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"engine at {url} did not start within 60 s")


async def test_killing_engine_under_load_fails_no_unstarted_chat(tmp_path: Path) -> None:
    survivor = start_engine(tmp_path / "survivor", engine_num_parallel=2, engine_threads=1)
    process, url = _spawn_engine(tmp_path / "doomed")
    try:
        await _wait_for_engine(url, process)
        backends = [
            ollama_backend("doomed", url, max_parallel=2),
            ollama_backend("survivor", survivor.url, max_parallel=2),
        ]
        started: list[str] = []
        async with running_gateway(*backends, health_interval=0.5, **SLOW_MACHINE) as gateway:
            chats = [asyncio.create_task(_chat_and_note_start(gateway, started)) for _ in range(10)]
            await wait_until(lambda: "doomed" in started, seconds=60)
            process.kill()
            results = await asyncio.gather(*chats)
    finally:
        process.kill()
        process.wait(timeout=30)
        survivor.stop()

    unstarted_failures = [
        events for events in results if isinstance(events[-1], Failed) and not events[-1].partial
    ]
    assert unstarted_failures == []
    assert all(isinstance(events[-1], Done | Failed) for events in results)
    assert "survivor" in started
