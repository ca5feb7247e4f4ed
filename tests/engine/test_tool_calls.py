"""The tool-call parser on whole outputs and on outputs streamed in small pieces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from llmcloud.engine.prompt import ChatTemplate
from llmcloud.engine.runtime import Chunk, Event, Finished
from llmcloud.engine.tool_calls import (
    ParsedText,
    ToolCall,
    ToolCallParser,
    ToolCalls,
    parse_tool_calls,
    template_message,
    tool_names,
    with_tool_calls,
)

NAMES = {"get_weather", "add"}
WEATHER = ToolCall("get_weather", {"city": "Paris"})
WEATHER_JSON = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ADD_JSON = '{"name": "add", "arguments": {"a": 1, "b": 2}}'


def tagged(call_json: str) -> str:
    return f"<tool_call>{call_json}</tool_call>"


def parse_streamed(text: str, piece: int) -> ParsedText:
    """Feed the output `piece` characters at a time, as a stream of tokens would."""
    parser = ToolCallParser(NAMES)
    parsed = ParsedText()
    for start in range(0, len(text), piece):
        parsed.add(parser.feed(text[start : start + piece]))
    parsed.add(parser.finish())
    return parsed


def test_tool_names_reads_function_names() -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"description": "no name"}},
        {"type": "retrieval"},
    ]
    assert tool_names(tools) == {"get_weather"}
    assert tool_names(None) == set()


def test_tagged_call() -> None:
    parsed = parse_tool_calls(tagged(WEATHER_JSON), NAMES)
    assert parsed.calls == [WEATHER]
    assert parsed.content == ""


def test_several_tagged_calls() -> None:
    text = f"{tagged(WEATHER_JSON)}\n{tagged(ADD_JSON)}\n"
    parsed = parse_tool_calls(text, NAMES)
    assert parsed.calls == [WEATHER, ToolCall("add", {"a": 1, "b": 2})]
    assert parsed.content == ""


def test_text_before_tagged_call() -> None:
    parsed = parse_tool_calls(f"Let me check.\n{tagged(WEATHER_JSON)}", NAMES)
    assert parsed.content == "Let me check.\n"
    assert parsed.calls == [WEATHER]


def test_text_after_tagged_call() -> None:
    parsed = parse_tool_calls(f"{tagged(WEATHER_JSON)}\nDone.", NAMES)
    assert parsed.content == "\nDone."
    assert parsed.calls == [WEATHER]


def test_unclosed_tagged_call_at_end() -> None:
    parsed = parse_tool_calls("<tool_call>" + WEATHER_JSON, NAMES)
    assert parsed.calls == [WEATHER]
    assert parsed.content == ""


def test_bare_json_call() -> None:
    parsed = parse_tool_calls(f"\n {WEATHER_JSON}\n", NAMES)
    assert parsed.calls == [WEATHER]
    assert parsed.content == ""


def test_bare_json_parameters_key() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse_tool_calls(text, NAMES).calls == [WEATHER]


def test_bare_json_list_of_calls() -> None:
    parsed = parse_tool_calls(f"[{WEATHER_JSON}, {ADD_JSON}]", NAMES)
    assert [call.name for call in parsed.calls] == ["get_weather", "add"]
    assert parsed.content == ""


def test_arguments_as_json_string() -> None:
    text = json.dumps({"name": "get_weather", "arguments": json.dumps({"city": "Paris"})})
    assert parse_tool_calls(text, NAMES).calls == [WEATHER]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "delete_everything", "arguments": {}}',
        tagged('{"name": "delete_everything", "arguments": {}}'),
        f'[{WEATHER_JSON}, {{"name": "delete_everything", "arguments": {{}}}}]',
    ],
)
def test_unknown_tool_name_is_content(text: str) -> None:
    parsed = parse_tool_calls(text, NAMES)
    assert parsed.calls == []
    assert parsed.content == text


@pytest.mark.parametrize(
    "text",
    [
        tagged('{"name": "get_weather", "arguments": {"city": '),
        '{"name": "get_weather", "arguments": {"city": "Paris"}',
        '{"name": "get_weather", "arguments": [1, 2]}',
        '{"name": "get_weather", "arguments": "not json"}',
        "<tool_call>not json at all",
    ],
)
def test_malformed_call_is_content(text: str) -> None:
    parsed = parse_tool_calls(text, NAMES)
    assert parsed.calls == []
    assert parsed.content == text


@pytest.mark.parametrize(
    "text",
    [
        f"{WEATHER_JSON} is what a call looks like.",
        "Calls look like this: " + WEATHER_JSON,
        '{"output": 42}',
        "[link](https://example.org)",
        "[1, 2, 3]",
        "a < b and <tool",
        "   ",
        "",
    ],
)
def test_ordinary_text_is_content(text: str) -> None:
    parsed = parse_tool_calls(text, NAMES)
    assert parsed.calls == []
    assert parsed.content == text


@pytest.mark.parametrize("piece", [1, 2, 3, 7])
@pytest.mark.parametrize(
    "text",
    [
        f"Let me check.\n{tagged(WEATHER_JSON)}\n{tagged(ADD_JSON)}\nDone.",
        f" [{WEATHER_JSON}, {ADD_JSON}] ",
        f"{WEATHER_JSON} and more",
        "x <tool_cal> y <tool_call>{bad}</tool_call> z",
        "[link](https://example.org) <",
    ],
)
def test_streamed_pieces_match_whole_output(text: str, piece: int) -> None:
    assert parse_streamed(text, piece) == parse_tool_calls(text, NAMES)


def test_stream_releases_plain_text_at_once() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed("Hello").content == "Hello"
    assert parser.feed(", world").content == ", world"


def test_stream_holds_possible_tag() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed("Sure <tool").content == "Sure "
    assert parser.feed("_call>" + WEATHER_JSON).content == ""
    parsed = parser.feed("</tool_call>")
    assert parsed.calls == [WEATHER]


def test_stream_releases_held_text_when_not_a_tag() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed("a <tool").content == "a "
    assert parser.feed("box> b").content == "<toolbox> b"


def test_stream_releases_json_that_is_no_call() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed('{"output"').content == ""
    assert parser.feed(": 42}").content == '{"output": 42}'


def test_stream_releases_bracket_that_opens_no_json() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed("[").content == ""
    assert parser.feed("link]").content == "[link]"


def test_stream_holds_bare_call_to_the_end() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed(WEATHER_JSON) == ParsedText()
    assert parser.finish() == ParsedText("", [WEATHER])


def test_stream_releases_leading_space_without_call() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed("\n").content == ""
    assert parser.feed("Hi").content == "\nHi"


async def events_of(texts: list[str]) -> AsyncIterator[Event]:
    for text in texts:
        yield Chunk(text)
    yield Finished("stop", prompt_tokens=3, generated_tokens=[1], prompt_eval_ns=0, eval_ns=0)


async def collect(events: AsyncIterator[Event | ToolCalls]) -> list[Event | ToolCalls]:
    return [event async for event in events]


def test_with_tool_calls_splits_events() -> None:
    texts = ["Hi ", "<tool_", "call>", WEATHER_JSON, "</tool_call>"]
    events = asyncio.run(collect(with_tool_calls(events_of(texts), NAMES)))
    assert events[0] == Chunk("Hi ")
    assert events[1] == ToolCalls([WEATHER])
    assert isinstance(events[2], Finished)
    assert len(events) == 3


def test_with_tool_calls_releases_held_text_at_end() -> None:
    events = asyncio.run(collect(with_tool_calls(events_of(["a <tool"]), NAMES)))
    assert events[0] == Chunk("a ")
    assert events[1] == Chunk("<tool")
    assert isinstance(events[2], Finished)


def test_template_message_decodes_openai_arguments() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}

    message = template_message("assistant", "", tool_calls=[call])

    assert message["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert message["tool_calls"][0]["id"] == "call_1"


def test_template_message_keeps_arguments_it_cannot_decode() -> None:
    call = {"function": {"name": "f", "arguments": "not json"}}

    message = template_message("assistant", "", tool_calls=[call])

    assert message["tool_calls"] == [call]


def test_template_message_carries_tool_result_ids() -> None:
    message = template_message("tool", "22 C", tool_name="weather", tool_call_id="call_1")

    assert message == {
        "role": "tool",
        "content": "22 C",
        "name": "weather",
        "tool_call_id": "call_1",
    }


def test_earlier_calls_reach_chat_template() -> None:
    source = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments.city }}]"
        "{% endfor %}{% if m.name %}({{ m.name }}){% endif %};{% endfor %}"
    )
    call = {"function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        template_message("assistant", "", tool_calls=[call]),
        template_message("tool", "3 C", tool_name="weather"),
    ]

    text = ChatTemplate(source).render(messages, add_generation_prompt=False)

    assert text == "assistant:[weather Oslo];tool:3 C(weather);"
