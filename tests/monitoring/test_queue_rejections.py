"""Queue rejections counted end to end: a real engine, and the web app's gateway in front of it.

Each test fills the one slot with a long streamed generation and the queue of one
place behind it. One more request then gets 503, and the rejection must add one to
llmcloud_llm_queue_rejections_total on the /metrics of the process that rejected it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BUNDLED_MODEL, RunningServer, start_engine
from tests.monitoring.test_engine_metrics import value
from tests.web.test_openai_api import start_web

pytestmark = pytest.mark.model

REJECTIONS = "llmcloud_llm_queue_rejections_total"
WAITING = "llmcloud_llm_requests_waiting"
WAIT_SECONDS = 60.0
# A raw counting prompt at temperature 0 keeps going until the context is full, far longer
# than the test needs the slot. Closing the stream at the end cancels the rest.
COUNTING = "Count: " + ", ".join(str(number) for number in range(1, 40)) + ","
ENDLESS = {"num_predict": -1, "temperature": 0}
# At temperature 0 the bundled model replies to this with 973 tokens (measured once: 62 s on
# a loaded 2-core machine), long enough to hold the backend's slot while the test runs.
ENDLESS_CHAT = "Write the numbers from 1 to 1000, one per line, and nothing else."


def wait_until(condition: Callable[[], bool], description: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{description} did not happen within {WAIT_SECONDS:g} s")
        time.sleep(0.05)


def send_in_background(send: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_engine_counts_queue_rejection(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, engine_num_parallel=1, engine_max_queue=1)
    labels = {"component": "engine", "model": BUNDLED_MODEL}
    generate = f"{engine.url}/api/generate"
    long = {"model": BUNDLED_MODEL, "prompt": COUNTING, "raw": True, "options": ENDLESS}
    short = {"model": BUNDLED_MODEL, "prompt": "Hi", "options": {"num_predict": 1}}
    try:
        httpx.post(generate, json={"model": BUNDLED_MODEL}, timeout=WAIT_SECONDS)  # load it
        before = value(engine, REJECTIONS, **labels)
        with httpx.stream("POST", generate, json=long, timeout=WAIT_SECONDS) as running:
            # Keep the iterator: closing it would close the stream and free the slot.
            lines = running.iter_lines()
            next(lines)  # the first token: the only slot is taken
            waiting = send_in_background(
                lambda: httpx.post(generate, json=short, timeout=WAIT_SECONDS)
            )
            wait_until(lambda: value(engine, WAITING, **labels) == 1, "a request waiting")
            rejected = httpx.post(generate, json=short, timeout=WAIT_SECONDS)
        waiting.join(WAIT_SECONDS)
        after = value(engine, REJECTIONS, **labels)
    finally:
        engine.stop()

    assert rejected.status_code == 503
    assert rejected.headers["retry-after"]
    assert "busy" in rejected.text
    assert after == before + 1


def test_gateway_counts_queue_rejection(tmp_path: Path) -> None:
    engine = start_engine(tmp_path / "engine", engine_num_parallel=1, engine_max_queue=4)
    backends = [{"name": "engine", "kind": "ollama", "base_url": engine.url, "max_parallel": 1}]
    web = start_web(
        tmp_path / "data",
        engine.url,
        gateway_backends=backends,
        gateway_max_queue_per_model=1,
        web_default_model=BUNDLED_MODEL,
    )
    web_server: RunningServer = web.server
    gateway = {"component": "gateway", "model": BUNDLED_MODEL}
    engine_labels = {"component": "engine", "model": BUNDLED_MODEL}
    key = web.key(web.account("alice"))
    headers = {"Authorization": f"Bearer {key}"}
    chat = f"{web.api_url}/chat/completions"
    long = {
        "model": BUNDLED_MODEL,
        "messages": [{"role": "user", "content": ENDLESS_CHAT}],
        "temperature": 0,
        "max_tokens": 1000,
        "stream": True,
    }
    short = {
        "model": BUNDLED_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
    }
    try:
        before = value(web_server, REJECTIONS, **gateway)
        engine_before = value(engine, REJECTIONS, **engine_labels)
        with httpx.stream(
            "POST", chat, json=long, headers=headers, timeout=WAIT_SECONDS
        ) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            next(line for line in lines if line)  # the first event: the backend's only slot
            waiting = send_in_background(lambda: web.post(key, short, timeout=WAIT_SECONDS))
            wait_until(lambda: value(web_server, WAITING, **gateway) == 1, "a chat waiting")
            rejected = web.post(key, short, timeout=WAIT_SECONDS)
        waiting.join(WAIT_SECONDS)
        after = value(web_server, REJECTIONS, **gateway)
        engine_after = value(engine, REJECTIONS, **engine_labels)
    finally:
        web_server.stop()
        engine.stop()

    assert rejected.status_code == 503
    assert rejected.headers["retry-after"]
    assert after == before + 1
    assert engine_after == engine_before  # the gateway rejected it before the engine saw it
