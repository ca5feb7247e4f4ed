"""`llmcloud run`: print one streamed answer, or hold an interactive chat in the terminal.

The interactive chat keeps the conversation and sends all of it with every
message, as Ollama's CLI does. Ctrl-C during an answer closes the stream,
which makes the engine stop generating, and returns to the prompt; the
unanswered message is dropped from the history. Ctrl-D or /bye leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import typer

from llmcloud.engine.client import EngineClient, EngineClientError, EngineUnreachable
from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.modelfile import PARAMETER_TYPES, parameter_value

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
BLOCK_QUOTE = '"""'

HELP_TEXT = """Available commands:
  /set system TEXT             Set the system message for the rest of the chat
  /set parameter NAME VALUE    Set a model option, such as temperature or num_predict
  /clear                       Forget the conversation so far (the system message stays)
  /bye                         Leave (Ctrl-D also leaves)
  /?, /help                    Show this help

Use \"\"\" to begin a multi-line message and \"\"\" again to end it.
Ctrl-C stops an answer while it is being written.
"""

Write = Callable[[str], None]
ReadLine = Callable[[str], str]


def write_stdout(text: str) -> None:
    typer.echo(text, nl=False)


def write_stderr(text: str) -> None:
    typer.echo(text, nl=False, err=True)


def stream_answer(chunks: Iterable[dict[str, Any]], write: Write) -> str:
    """Write the content of each chat chunk as it arrives; return the whole answer."""
    parts = []
    for chunk in chunks:
        message = chunk.get("message")
        text = message.get("content", "") if isinstance(message, dict) else ""
        if text:
            write(text)
            parts.append(text)
    return "".join(parts)


def answer_once(
    client: EngineClient,
    model: str,
    prompt: str,
    *,
    keep_alive: str | None = None,
    options: dict[str, Any] | None = None,
    write: Write = write_stdout,
) -> str:
    """Print the answer to one prompt; an empty prompt only loads the model, as Ollama does."""
    messages = [{"role": "user", "content": prompt}] if prompt else []
    chunks = client.chat(model, messages, options=options, keep_alive=keep_alive)
    with closing(chunks):
        answer = stream_answer(chunks, write)
    if prompt and not answer.endswith("\n"):
        write("\n")
    return answer


@dataclass
class ChatSession:
    """An interactive chat with one model: its history, system message and commands."""

    client: EngineClient
    model: str
    keep_alive: str | None = None
    write: Write = write_stdout
    warn: Write = write_stderr
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)

    def run(self, read_line: ReadLine) -> None:
        """Read and answer messages until /bye or end of input (Ctrl-D)."""
        self.write("Send a message (/? for help, /bye to leave)\n")
        while True:
            try:
                line, is_block = self._read_message(read_line)
            except EOFError:
                self.write("\n")
                return
            except KeyboardInterrupt:
                self.write("\nUse Ctrl-D or /bye to leave.\n")
                continue
            if is_block:
                if line.strip():
                    self.ask(line)
            elif not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """Carry out one line of input; return False when the chat should end."""
        text = line.strip()
        if not text:
            return True
        if not text.startswith("/"):
            self.ask(line)
            return True

        command, _, argument = text.partition(" ")
        if command == "/bye":
            return False
        if command in ("/?", "/help"):
            self.write(HELP_TEXT)
        elif command == "/clear":
            self.history.clear()
            self.write("Cleared the conversation.\n")
        elif command == "/set":
            self._set(argument.strip())
        else:
            self.warn(f"Unknown command {command!r}; type /? for help.\n")
        return True

    def ask(self, prompt: str) -> str | None:
        """Stream the answer to a message; return it, or None when it was stopped or failed."""
        question = {"role": "user", "content": prompt}
        messages = self._system_messages() + self.history + [question]
        try:
            chunks = self.client.chat(
                self.model, messages, options=self.options, keep_alive=self.keep_alive
            )
            with closing(chunks):
                answer = stream_answer(chunks, self.write)
        except KeyboardInterrupt:
            self.write("\n")
            return None
        except EngineUnreachable:
            raise
        except EngineClientError as exc:
            self.warn(f"Error: {exc.message}\n")
            return None

        self.history += [question, {"role": "assistant", "content": answer}]
        self.write("\n\n" if not answer.endswith("\n") else "\n")
        return answer

    def _set(self, argument: str) -> None:
        name, _, value = argument.partition(" ")
        value = value.strip()
        if name == "system" and value:
            self.system = value
            self.write("Set the system message.\n")
        elif name == "parameter" and len(value.split()) >= 2:
            self._set_parameter(*value.split(" ", 1))
        else:
            self.warn("Usage: /set system TEXT, or /set parameter NAME VALUE\n")

    def _set_parameter(self, name: str, text: str) -> None:
        text = text.strip()
        try:
            if PARAMETER_TYPES.get(name) is list:
                value: Any = text.split()
            else:
                value = parameter_value(name, text)
        except InvalidRequest as exc:
            self.warn(f"Error: {exc.message}\n")
            return
        self.options[name] = value
        self.write(f"Set parameter {name} to {text}.\n")

    def _system_messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _read_message(self, read_line: ReadLine) -> tuple[str, bool]:
        """Read one line or a \"\"\" block; return the text and whether it was a block."""
        line = read_line(PROMPT)
        if not line.lstrip().startswith(BLOCK_QUOTE):
            return line, False
        first = line.lstrip()[len(BLOCK_QUOTE) :]
        if first.rstrip().endswith(BLOCK_QUOTE):
            return first.rstrip()[: -len(BLOCK_QUOTE)], True
        lines = [first]
        while True:
            line = read_line(CONTINUATION_PROMPT)
            if line.rstrip().endswith(BLOCK_QUOTE):
                lines.append(line.rstrip()[: -len(BLOCK_QUOTE)])
                return "\n".join(lines).strip("\n"), True
            lines.append(line)
