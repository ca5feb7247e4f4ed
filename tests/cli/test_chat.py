"""The interactive chat of `llmcloud run`, driven through its functions and through a terminal."""

from __future__ import annotations

import inspect
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmcloud.cli.chat import ChatSession, answer_once, stream_answer
from llmcloud.engine.client import EngineClient, Stream
from tests.conftest import BUNDLED_MODEL

# Few tokens per answer keep each test to about a second.
SHORT_ANSWERS = {"num_predict": 6}


class RecordingClient(EngineClient):
    """A real client that also keeps the messages it sent and the streams it opened."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent: list[list[dict[str, str]]] = []
        self.options: list[dict[str, Any] | None] = []
        self.streams: list[Stream] = []

    def chat(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        options: dict[str, Any] | None = None,
        keep_alive: str | None = None,
    ) -> Stream:
        self.sent.append([dict(message) for message in messages])
        self.options.append(dict(options) if options else None)
        stream = super().chat(model, messages, options=options, keep_alive=keep_alive)
        self.streams.append(stream)
        return stream


class Output:
    """Collects what the session writes; can raise KeyboardInterrupt once, like Ctrl-C."""

    def __init__(self, interrupt_on_answer: bool = False) -> None:
        self.parts: list[str] = []
        self.interrupt_on_answer = interrupt_on_answer

    def __call__(self, text: str) -> None:
        if self.interrupt_on_answer and text.strip():
            self.interrupt_on_answer = False
            raise KeyboardInterrupt
        self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def reader(*lines: str | BaseException) -> Callable[[str], str]:
    """Return input lines in turn; an exception item is raised instead, then EOFError ends it."""
    queue = list(lines)

    def read_line(prompt: str) -> str:
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return read_line


@pytest.fixture
def client(engine_url: str) -> Iterator[RecordingClient]:
    with RecordingClient(engine_url) as recording:
        yield recording


def session(client: RecordingClient, output: Output, errors: Output | None = None) -> ChatSession:
    return ChatSession(
        client,
        BUNDLED_MODEL,
        options=dict(SHORT_ANSWERS),
        write=output,
        warn=errors or Output(),
    )


def test_chat_keeps_history_between_messages(client: RecordingClient) -> None:
    chat = session(client, Output())

    chat.run(reader("Hello", "Say more", "/bye"))

    assert [message["role"] for message in chat.history] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert client.sent[1][0] == {"role": "user", "content": "Hello"}
    assert client.sent[1][-1] == {"role": "user", "content": "Say more"}


def test_chat_sends_system_message_first(client: RecordingClient) -> None:
    output = Output()
    chat = session(client, output)

    chat.run(reader("/set system Answer in French.", "Hello", "/bye"))

    assert "Set the system message." in output.text
    assert client.sent[0][0] == {"role": "system", "content": "Answer in French."}


def test_chat_clear_forgets_history_but_keeps_system(client: RecordingClient) -> None:
    chat = session(client, Output())

    chat.run(reader("/set system Be brief.", "Hello", "/clear", "Again", "/bye"))

    assert chat.history[0] == {"role": "user", "content": "Again"}
    assert client.sent[1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Again"},
    ]


def test_chat_ctrl_c_stops_answer_and_closes_stream(client: RecordingClient) -> None:
    output = Output(interrupt_on_answer=True)
    chat = session(client, output)

    stopped = chat.ask("Tell me a long story")
    answered = chat.ask("Hello")

    assert stopped is None
    assert inspect.getgeneratorstate(client.streams[0]) == inspect.GEN_CLOSED
    assert answered
    assert chat.history[0] == {"role": "user", "content": "Hello"}
    assert len(chat.history) == 2


def test_chat_ctrl_c_at_prompt_prints_hint(client: RecordingClient) -> None:
    output = Output()
    chat = session(client, output)

    chat.run(reader(KeyboardInterrupt(), "/bye"))

    assert "Use Ctrl-D or /bye to leave." in output.text


def test_chat_end_of_input_leaves(client: RecordingClient) -> None:
    chat = session(client, Output())

    chat.run(reader())

    assert client.sent == []


def test_chat_block_quote_sends_lines_as_one_message(client: RecordingClient) -> None:
    chat = session(client, Output())

    chat.run(reader('"""First line', "/second line", 'third"""', "/bye"))

    assert client.sent[0][-1] == {"role": "user", "content": "First line\n/second line\nthird"}


def test_chat_help_lists_commands(client: RecordingClient) -> None:
    output = Output()

    session(client, output).run(reader("/?", "/bye"))

    for command in ("/set system", "/set parameter", "/clear", "/bye"):
        assert command in output.text


def test_chat_unknown_command_warns(client: RecordingClient) -> None:
    errors = Output()

    session(client, Output(), errors).run(reader("/shout", "/bye"))

    assert "Unknown command '/shout'" in errors.text
    assert client.sent == []


def test_chat_set_parameter_converts_value(client: RecordingClient) -> None:
    chat = session(client, Output())

    chat.run(reader("/set parameter temperature 0.3", "Hello", "/bye"))

    assert client.options[0] == {"num_predict": 6, "temperature": 0.3}


def test_chat_set_parameter_rejects_invalid_value(client: RecordingClient) -> None:
    errors = Output()
    chat = session(client, Output(), errors)

    chat.run(reader("/set parameter num_predict lots", "/bye"))

    assert "invalid value 'lots' for parameter num_predict" in errors.text
    assert chat.options == SHORT_ANSWERS


def test_chat_shows_engine_error(client: RecordingClient) -> None:
    errors = Output()
    chat = ChatSession(client, "no-such-model", write=Output(), warn=errors)

    chat.run(reader("Hello", "/bye"))

    assert "model 'no-such-model:latest' not found" in errors.text
    assert chat.history == []


def test_answer_once_ends_with_newline(client: RecordingClient) -> None:
    output = Output()

    answer = answer_once(client, BUNDLED_MODEL, "Hello", options=SHORT_ANSWERS, write=output)

    assert output.text == answer + "\n"


def test_stream_answer_skips_chunks_without_content() -> None:
    chunks = [
        {"message": {"role": "assistant", "content": "Hi"}},
        {"done": True},
        {"message": {"role": "assistant", "content": " there"}},
    ]
    output = Output()

    assert stream_answer(chunks, output) == "Hi there"
    assert output.parts == ["Hi", " there"]


def test_run_in_terminal_shows_help(engine_url: str, tmp_path: Path) -> None:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("LLMCLOUD_")
    }
    environment["XDG_CONFIG_HOME"] = str(tmp_path)
    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "llmcloud", "run", BUNDLED_MODEL, "--url", engine_url]
    process = subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, env=environment
    )
    os.close(secondary)
    os.write(primary, b"/?\n/bye\n")

    output = read_until_exit(primary, process, timeout=60)

    assert process.returncode == 0, output
    assert "Send a message (/? for help, /bye to leave)" in output
    assert "Available commands:" in output


def read_until_exit(fd: int, process: subprocess.Popen[bytes], timeout: float) -> str:
    """Read a pseudo-terminal until the process on it exits; kill it after `timeout` seconds."""
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")
