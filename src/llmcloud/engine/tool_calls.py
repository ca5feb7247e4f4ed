"""Tool calls parsed out of a model's output when the request offered tools.

Models trained for function calling write a call as text, in one of two common
forms, and the chat template names the form:

- Hermes and Qwen style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call, possibly after some text.
- A bare JSON object `{"name": ..., "arguments": {...}}` (or `"parameters"`),
  or a JSON list of such objects, that makes up the whole output.

A parsed object is a call only when its name is one of the request's tools.
Anything else, malformed JSON included, stays ordinary content.

`ToolCallParser` works on streamed text. It releases text at once unless the
text could be the start of a call: leading whitespace, a `{` or `[` that
opens the output, or a `<tool_call>` tag (or a prefix of one) anywhere. Such
text is held until it is known to be a call or not. A bare JSON output is so
held to its end, because text after the JSON would make it ordinary content.
Whitespace next to a call is dropped, so an output that is only calls has the
content "".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llmcloud.engine.runtime import Chunk, Event

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

_decoder = json.JSONDecoder()


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedText:
    """Text that is known to be content, and the calls found, in output order."""

    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def add(self, other: ParsedText) -> None:
        self.content += other.content
        self.calls.extend(other.calls)


@dataclass
class ToolCalls:
    """A generation event with the calls that the parser found since the last event."""

    calls: list[ToolCall]


def tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    """Names of the functions in a request's `tools`, in Ollama's and OpenAI's shape."""
    names = set()
    for tool in tools or []:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def template_message(
    role: str,
    content: str,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_name: str | None = None,
    tool_call_id: str | None = None,
) -> dict[str, Any]:
    """Return a request message as chat templates read it, with its earlier calls and results.

    Templates read a call's arguments as an object, which OpenAI's API sends as a
    JSON string; a string that contains a JSON object is decoded, and any other is kept.
    """
    message: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        message["tool_calls"] = [_call_for_template(call) for call in tool_calls]
    if tool_name is not None:
        message["name"] = tool_name
    if tool_call_id is not None:
        message["tool_call_id"] = tool_call_id
    return message


def _call_for_template(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def parse_tool_calls(text: str, names: set[str]) -> ParsedText:
    """Split a whole output into content and calls."""
    parser = ToolCallParser(names)
    parsed = parser.feed(text)
    parsed.add(parser.finish())
    return parsed


async def with_tool_calls(
    events: AsyncIterator[Event], names: set[str]
) -> AsyncIterator[Event | ToolCalls]:
    """Pass generation events through a parser: chunks carry content only, calls come apart."""
    parser = ToolCallParser(names)
    async for event in events:
        parsed = parser.feed(event.text) if isinstance(event, Chunk) else parser.finish()
        if parsed.content:
            yield Chunk(parsed.content)
        if parsed.calls:
            yield ToolCalls(parsed.calls)
        if not isinstance(event, Chunk):
            yield event


class ToolCallParser:
    """Incremental split of streamed text into content and tool calls."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._held_text = ""
        self._mode = "text"  # "text", "tag" (inside a <tool_call> block) or "json"
        self._at_start = True  # nothing but whitespace has been seen yet
        self._next_to_call = True  # whitespace here is dropped if a call follows
        self._found_call = False

    def feed(self, text: str) -> ParsedText:
        """Take the next piece of text; return what is now known to be content or calls."""
        self._held_text += text
        return self._drain(final=False)

    def finish(self) -> ParsedText:
        """Resolve the held text at the end of the output."""
        parsed = self._drain(final=True)
        if self._held_text.strip() or not self._found_call:
            parsed.content += self._held_text
        self._held_text = ""
        return parsed

    def _drain(self, *, final: bool) -> ParsedText:
        """Scan the held text in the current mode until a step returns False (wait for more)."""
        parsed = ParsedText()
        steps = {"text": self._scan_text, "tag": self._scan_tag, "json": self._scan_json}
        while self._held_text:
            if not steps[self._mode](parsed, final):
                break
        return parsed

    def _scan_text(self, parsed: ParsedText, final: bool) -> bool:
        """Release text up to a possible call, and switch mode at one."""
        stripped = self._held_text.lstrip()
        if not stripped and self._next_to_call:
            return False
        if self._at_start and stripped[:1] in ("{", "["):
            self._mode = "json"
            return True

        start = self._held_text.find(OPEN_TAG)
        if start >= 0:
            self._release(parsed, start)
            self._mode = "tag"
            return True
        self._release(parsed, _partial_tag_start(self._held_text))
        return False

    def _scan_tag(self, parsed: ParsedText, final: bool) -> bool:
        """Parse a <tool_call> block once it is closed, or at the end of the output."""
        open_end = self._held_text.index(OPEN_TAG) + len(OPEN_TAG)
        close = self._held_text.find(CLOSE_TAG, open_end)
        if close < 0 and not final:
            return False

        # NOTE: a block that the output ends without closing still counts when its JSON is
        # a call, because some models stop generating before the closing tag.
        if close < 0:
            close = end = len(self._held_text)
        else:
            end = close + len(CLOSE_TAG)
        self._resolve(parsed, end, self._calls_in(self._held_text[open_end:close]))
        return True

    def _scan_json(self, parsed: ParsedText, final: bool) -> bool:
        """Decide whether an output that opens with JSON is a call, once its end is known."""
        text = self._held_text.lstrip()
        if not _could_open_call(text):
            self._resolve(parsed, len(self._held_text), [])
            return True
        try:
            value, end = _decoder.raw_decode(text)
        except json.JSONDecodeError:
            if final:
                self._resolve(parsed, len(self._held_text), [])
            return final
        if text[end:].strip():
            self._resolve(parsed, len(self._held_text), [])
            return True
        calls = self._calls_from(value)
        if not calls:
            self._resolve(parsed, len(self._held_text), [])
            return True
        if final:
            self._resolve(parsed, len(self._held_text), calls)
        return final

    def _resolve(self, parsed: ParsedText, end: int, calls: list[ToolCall]) -> None:
        """End the held candidate at `end`: as calls when there are any, else as content."""
        candidate, self._held_text = self._held_text[:end], self._held_text[end:]
        self._mode = "text"
        self._at_start = False
        if calls:
            parsed.calls.extend(calls)
            self._found_call = True
            self._next_to_call = True
        else:
            parsed.content += candidate
            self._next_to_call = False

    def _release(self, parsed: ParsedText, end: int) -> None:
        """Move the held text up to `end` to the content, unless it is whitespace next to a call."""
        text = self._held_text[:end]
        if self._next_to_call and not text.strip():
            return
        parsed.content += text
        self._held_text = self._held_text[end:]
        if text.strip():
            self._at_start = False
            self._next_to_call = False

    def _calls_in(self, text: str) -> list[ToolCall]:
        try:
            return self._calls_from(json.loads(text))
        except json.JSONDecodeError:
            return []

    def _calls_from(self, value: Any) -> list[ToolCall]:
        """Return the calls in a decoded object or list, or [] unless every item is a call."""
        items = value if isinstance(value, list) else [value]
        calls = [_as_call(item, self.names) for item in items]
        if not calls or None in calls:
            return []
        return [call for call in calls if call is not None]


def _could_open_call(text: str) -> bool:
    """Check whether JSON text that opens with `{` or `[` can still become one or more calls."""
    rest = text[1:].lstrip()
    if not rest:
        return True
    if text[0] == "[":
        return rest[0] == "]" or (rest[0] == "{" and _could_open_call(rest))
    return rest[0] in '"}'


def _as_call(value: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=value["name"], arguments=arguments)


def _partial_tag_start(text: str) -> int:
    """Index where `text` ends with a proper prefix of the open tag, or len(text) if it does not."""
    start = text.rfind("<", max(0, len(text) - len(OPEN_TAG) + 1))
    if start >= 0 and OPEN_TAG.startswith(text[start:]):
        return start
    return len(text)
