"""Parsing of Ollama's NDJSON and OpenAI's SSE chat streams, line by line."""

from __future__ import annotations

import json

import pytest

from llmcloud.gateway.protocols import (
    OllamaProtocol,
    OllamaStreamParser,
    OpenAIProtocol,
    OpenAIStreamParser,
    UpstreamError,
)


def ollama_line(content: str, **fields: object) -> str:
    return json.dumps({"message": {"role": "assistant", "content": content}, **fields})


def sse(data: dict[str, object]) -> str:
    return "data: " + json.dumps(data)


def test_ollama_parser_reads_tokens_and_final_line() -> None:
    parser = OllamaStreamParser()
    final = ollama_line(
        "", done=True, done_reason="length", prompt_eval_count=3, eval_count=2, eval_duration=9
    )

    texts = [parser.feed(line) for line in (ollama_line("Hi"), ollama_line(" there"), final)]

    assert texts == ["Hi", " there", None]
    assert parser.result is not None
    assert parser.result.done_reason == "length"
    assert parser.result.prompt_tokens == 3
    assert parser.result.completion_tokens == 2
    assert parser.result.eval_ns == 9


def test_ollama_parser_keeps_text_of_final_line() -> None:
    parser = OllamaStreamParser()

    assert parser.feed(ollama_line("end", done=True)) == "end"
    assert parser.result is not None


def test_ollama_parser_raises_on_error_line() -> None:
    with pytest.raises(UpstreamError, match="model crashed"):
        OllamaStreamParser().feed('{"error": "model crashed"}')


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '{"message": '])
def test_ollama_parser_rejects_bad_line(line: str) -> None:
    with pytest.raises(UpstreamError):
        OllamaStreamParser().feed(line)


def test_ollama_parser_without_final_line_is_cut_short() -> None:
    parser = OllamaStreamParser()
    parser.feed(ollama_line("Hi"))

    assert parser.finish() is None


def test_openai_parser_reads_chunks_usage_and_done() -> None:
    parser = OpenAIStreamParser()
    lines = [
        sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        "",
        sse({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}),
        ": keep-alive comment",
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
        sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}),
        "data: [DONE]",
    ]

    texts = [parser.feed(line) for line in lines]

    assert texts == [None, None, "Hi", None, None, None, None]
    assert parser.result is not None
    assert parser.result.done_reason == "length"
    assert parser.result.prompt_tokens == 5
    assert parser.result.completion_tokens == 1


def test_openai_parser_accepts_missing_done() -> None:
    parser = OpenAIStreamParser()
    parser.feed(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))

    result = parser.finish()

    assert result is not None
    assert result.done_reason == "stop"


def test_openai_parser_without_finish_is_cut_short() -> None:
    parser = OpenAIStreamParser()
    parser.feed(sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}))

    assert parser.finish() is None


def test_openai_parser_raises_on_error_event() -> None:
    with pytest.raises(UpstreamError, match="out of memory"):
        OpenAIStreamParser().feed(sse({"error": {"message": "out of memory"}}))


def test_ollama_model_names() -> None:
    listing = {"models": [{"name": "a:1b", "model": "a:1b"}, {"model": "b:7b"}]}

    assert OllamaProtocol().model_names(listing) == ["a:1b", "b:7b"]


def test_openai_model_names() -> None:
    listing = {"object": "list", "data": [{"id": "meta-llama/Llama-3.1-8B"}]}

    assert OpenAIProtocol().model_names(listing) == ["meta-llama/Llama-3.1-8B"]


@pytest.mark.parametrize("listing", [[], {"models": "none"}, None])
def test_ollama_model_names_reject_bad_listing(listing: object) -> None:
    with pytest.raises(UpstreamError, match="'models' array"):
        OllamaProtocol().model_names(listing)
