"""Queueing, cancellation and keep-alive on an engine with one slot and a queue of one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import BUNDLED_MODEL, RunningServer, start_engine

# A raw counting prompt at temperature 0 keeps going until the context is full, which takes
# far longer than any of these tests waits.
LONG = {"num_predict": -1, "num_ctx": 4096, "temperature": 0}
COUNTING = ", ".join(str(number) for number in range(1, 40)) + ","


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_engine(
        tmp_path_factory.mktemp("one-slot"),
        engine_num_parallel=1,
        engine_max_queue=1,
        engine_num_ctx=4096,
    )
    yield server
    server.stop()


def _open_stream(stack: ExitStack, client: httpx.Client, prompt: str) -> httpx.Response:
    request = client.build_request(
        "POST",
        "/api/generate",
        json={
            "model": BUNDLED_MODEL,
            "prompt": f"{prompt} {COUNTING}",
            "raw": True,
            "options": LONG,
        },
    )
    return stack.enter_context(_streaming(client, request))


class _streaming:
    def __init__(self, client: httpx.Client, request: httpx.Request) -> None:
        self.client = client
        self.request = request

    def __enter__(self) -> httpx.Response:
        self.response = self.client.send(self.request, stream=True)
        return self.response

    def __exit__(self, *exc: object) -> None:
        self.response.close()


def _loaded(url: str) -> list[str]:
    return [model["name"] for model in httpx.get(url + "/api/ps").json()["models"]]


def _wait_for(condition: object, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _quick(url: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        url + "/api/generate",
        json={
            "model": BUNDLED_MODEL,
            "prompt": "Hi",
            "stream": False,
            "options": {"num_predict": 1},
        },
        timeout=timeout,
    )


def test_full_queue_answers_503_with_retry_after(small_engine: RunningServer) -> None:
    with httpx.Client(base_url=small_engine.url, timeout=60) as client, ExitStack() as stack:
        # Keep the line iterators: dropping one closes its stream, which cancels the request.
        running = _open_stream(stack, client, "Numbers:").iter_lines()
        json.loads(next(running))
        queued = _open_stream(stack, client, "More numbers:")
        time.sleep(0.3)

        rejected = _quick(small_engine.url)

        assert rejected.status_code == 503
        assert rejected.headers["retry-after"].isdigit()
        assert "busy" in rejected.json()["error"]
        assert queued.status_code == 200
    assert _wait_for(lambda: _quick(small_engine.url).status_code == 200)


def test_cancelled_stream_frees_slot(small_engine: RunningServer) -> None:
    with httpx.Client(base_url=small_engine.url, timeout=60) as client, ExitStack() as stack:
        running = _open_stream(stack, client, "Numbers:")
        lines = running.iter_lines()
        json.loads(next(lines))
        json.loads(next(lines))
    # The stream is closed; its generation must stop and give the slot to the next request,
    # long before the 4096-token answer would have ended.
    response = _quick(small_engine.url, timeout=15)
    assert response.status_code == 200


def test_queued_request_leaves_queue_on_disconnect(small_engine: RunningServer) -> None:
    with httpx.Client(base_url=small_engine.url, timeout=60) as client, ExitStack() as stack:
        running = _open_stream(stack, client, "Numbers:").iter_lines()
        json.loads(next(running))
        with ExitStack() as queued_stack:
            _open_stream(queued_stack, client, "Queued:")
            time.sleep(0.3)
        time.sleep(0.3)
        # The queued request went away, so the queue has room again.
        with ExitStack() as second_stack:
            replacement = _open_stream(second_stack, client, "Replacement:")
            assert replacement.status_code == 200


def test_keep_alive_zero_unloads(small_engine: RunningServer) -> None:
    response = httpx.post(
        small_engine.url + "/api/generate",
        json={
            "model": BUNDLED_MODEL,
            "prompt": "Hi",
            "stream": False,
            "keep_alive": 0,
            "options": {"num_predict": 2},
        },
        timeout=60,
    )
    assert response.status_code == 200
    assert _wait_for(lambda: BUNDLED_MODEL not in _loaded(small_engine.url), seconds=5)


def test_negative_keep_alive_keeps_model(small_engine: RunningServer) -> None:
    response = httpx.post(
        small_engine.url + "/api/generate",
        json={"model": BUNDLED_MODEL, "keep_alive": -1},
        timeout=60,
    )
    assert response.json()["done_reason"] == "load"
    time.sleep(1.5)
    models = httpx.get(small_engine.url + "/api/ps").json()["models"]
    assert [model["name"] for model in models] == [BUNDLED_MODEL]
    assert models[0]["expires_at"].startswith("2318")


def test_short_keep_alive_expires(small_engine: RunningServer) -> None:
    httpx.post(
        small_engine.url + "/api/generate",
        json={"model": BUNDLED_MODEL, "keep_alive": "1s"},
        timeout=60,
    )
    assert BUNDLED_MODEL in _loaded(small_engine.url)
    assert _wait_for(lambda: BUNDLED_MODEL not in _loaded(small_engine.url), seconds=10)


def test_empty_prompt_with_zero_keep_alive_unloads(small_engine: RunningServer) -> None:
    httpx.post(small_engine.url + "/api/generate", json={"model": BUNDLED_MODEL}, timeout=60)
    response = httpx.post(
        small_engine.url + "/api/generate",
        json={"model": BUNDLED_MODEL, "keep_alive": 0},
        timeout=60,
    )
    assert response.json()["done_reason"] == "unload"
    assert BUNDLED_MODEL not in _loaded(small_engine.url)


def test_engine_token_required(tmp_path: Path) -> None:
    server = start_engine(tmp_path, engine_token="s3cret-token")
    try:
        denied = httpx.get(server.url + "/api/tags")
        allowed = httpx.get(
            server.url + "/api/tags", headers={"Authorization": "Bearer s3cret-token"}
        )
        health = httpx.get(server.url + "/healthz")
    finally:
        server.stop()
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200
    assert health.status_code == 200


def test_request_without_keep_alive_gets_default(small_engine: RunningServer) -> None:
    httpx.post(
        small_engine.url + "/api/generate",
        json={"model": BUNDLED_MODEL, "keep_alive": "1s"},
        timeout=60,
    )
    _quick(small_engine.url)
    time.sleep(2.5)
    # The second request named no keep_alive, so the engine default (5 minutes) applies to it.
    assert BUNDLED_MODEL in _loaded(small_engine.url)
