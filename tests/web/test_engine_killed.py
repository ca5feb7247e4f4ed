"""Killing a real engine process in the middle of an answer, seen through the chat socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from llmcloud.db.models import MessageStatus
from llmcloud.web import create_app
from tests.conftest import BUNDLED_MODEL
from tests.web.conftest import CHEAP_HASHER, ORIGIN, new_chat, sign_up, web_settings
from tests.web.test_chat_ws import connect, receive_until, saved_messages, send_prompt


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = {
        **os.environ,
        "LLMCLOUD_DATA_DIR": str(tmp_path / "engine"),
        "LLMCLOUD_ENGINE_THREADS": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "llmcloud", "engine", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/tags", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the engine did not start within 60 s")
    yield process, url
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_engine_killed_mid_answer_keeps_partial(
    tmp_path: Path, engine_process: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = engine_process
    settings = web_settings(
        tmp_path / "web",
        url,
        gateway_backends=[{"name": "engine", "kind": "ollama", "base_url": url}],
        web_default_model=BUNDLED_MODEL,
        gateway_first_token_timeout=60.0,
    )
    app = create_app(settings, hasher=CHEAP_HASHER)
    with TestClient(app, headers={"Origin": ORIGIN}, follow_redirects=False) as admin:
        assert sign_up(admin, "admin").status_code == 303
        chat_id = new_chat(admin)
        with connect(admin, chat_id) as socket:
            send_prompt(socket, "Write a very long story about a dragon.", model=BUNDLED_MODEL)
            received = receive_until(socket, "token")
            received += [socket.receive_json() for _ in range(3)]
            process.send_signal(signal.SIGKILL)
            received += receive_until(socket, "error", "done")

        page = admin.get(f"/chats/{chat_id}").text
        answer = saved_messages(admin, chat_id)[-1]

    written = "".join(message["text"] for message in received if message["type"] == "token")
    assert received[-1]["type"] == "error"
    assert received[-1]["partial"] is True
    assert answer.role == "assistant"
    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.content == written
    assert answer.content
    assert "Interrupted" in page
