"""Chats through fake backends: the relayed events, failover before the first token, failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import aclosing

import pytest

from llmcloud.gateway import (
    Backend,
    Done,
    Failed,
    InvalidChatRequest,
    NoBackendAvailable,
    Started,
    Token,
    UnknownModel,
)
from llmcloud.gateway.protocols import OllamaProtocol, UpstreamError
from llmcloud.gateway.relay import _parse_lines
from tests.gateway.conftest import (
    HELLO,
    answer_text,
    closed_port_url,
    collect,
    ollama_backend,
    openai_backend,
    running_gateway,
)
from tests.gateway.fake_backend import DEFAULT_TOKENS, FakeBackend
from tests.gateway.test_http import read_request, serving

pytestmark = pytest.mark.anyio

Fakes = Callable[..., FakeBackend]
SSE_TOKEN = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
SSE_FINISH = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'


async def test_chat_relays_openai_stream(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    assert events[0] == Started("vllm")
    assert events[1] == Token(DEFAULT_TOKENS[0])
    assert answer_text(events) == "".join(DEFAULT_TOKENS)
    done = events[-1]
    assert isinstance(done, Done)
    assert done.done_reason == "stop"
    assert done.prompt_tokens == 7
    assert done.completion_tokens == len(DEFAULT_TOKENS)
    assert done.durations.total_ns >= done.durations.first_token_ns > 0
    assert done.durations.load_ns is None


async def test_chat_relays_ollama_stream(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(ollama_backend("ollama", fake.url)) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    assert events[0] == Started("ollama")
    assert answer_text(events) == "".join(DEFAULT_TOKENS)
    done = events[-1]
    assert isinstance(done, Done)
    assert done.completion_tokens == len(DEFAULT_TOKENS)
    assert done.durations.load_ns == 1_000_000
    assert done.durations.eval_ns == 2_000_000


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_tokens_read_together_make_one_event(fakes: Fakes, kind: str) -> None:
    fake = fakes()
    fake.burst = True
    backend = openai_backend("vllm", fake) if kind == "openai" else ollama_backend("vllm", fake.url)
    async with running_gateway(backend) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    first, *rest = DEFAULT_TOKENS
    assert events[:3] == [Started("vllm"), Token(first), Token("".join(rest))]
    assert isinstance(events[3], Done)
    assert len(events) == 4


async def test_chat_sends_bearer_key(fakes: Fakes) -> None:
    fake = fakes()
    backend = openai_backend("vllm", fake, api_key="sk-test-key")
    async with running_gateway(backend) as gateway:
        await collect(gateway.chat("fake-model", HELLO))

    health_check, chat = fake.requests[0], fake.chat_requests()[-1]
    assert health_check.headers["authorization"] == "Bearer sk-test-key"
    assert chat.headers["authorization"] == "Bearer sk-test-key"


async def test_chat_sends_no_key_when_none_is_set(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        await collect(gateway.chat("fake-model", HELLO))

    assert "authorization" not in fake.chat_requests()[-1].headers


@pytest.mark.parametrize(("keep_alive", "sent"), [("10m", "10m"), ("-1", -1), ("90", 90)])
async def test_chat_sends_keep_alive_to_ollama(
    fakes: Fakes, keep_alive: str, sent: str | int
) -> None:
    fake = fakes()
    async with running_gateway(ollama_backend("ollama", fake.url), keep_alive=keep_alive) as gw:
        await collect(gw.chat("fake-model", HELLO))

    body = fake.chat_requests()[-1].body
    assert body["keep_alive"] == sent
    assert body["stream"] is True


async def test_chat_sends_openai_body(fakes: Fakes) -> None:
    fake = fakes()
    options = {"temperature": 0.5, "num_predict": 20, "top_k": 5, "stop": ["END"]}
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        await collect(gateway.chat("fake-model", HELLO, options=options, system="Be brief."))

    body = fake.chat_requests()[-1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_tokens"] == 20
    assert body["temperature"] == 0.5
    assert body["stop"] == ["END"]
    assert "top_k" not in body
    assert "keep_alive" not in body


async def test_failover_when_backend_went_down(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    backends = [openai_backend("first", first), openai_backend("second", second)]
    # Health checks are too rare to notice the stop, so the request itself finds it.
    async with running_gateway(*backends, health_interval=60) as gateway:
        first.stop()
        events = await collect(gateway.chat("fake-model", HELLO))
        states = {backend.name: backend for backend in gateway.status().backends}

    assert events[0] == Started("second")
    assert isinstance(events[-1], Done)
    assert states["first"].healthy is False
    assert "ConnectError" in (states["first"].last_error or "")


async def test_failover_on_server_error(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    first.chat_status = 500
    async with running_gateway(
        openai_backend("first", first), openai_backend("second", second)
    ) as gw:
        events = await collect(gw.chat("fake-model", HELLO))
        states = {backend.name: backend for backend in gw.status().backends}

    assert events[0] == Started("second")
    assert isinstance(events[-1], Done)
    assert states["first"].consecutive_failures == 1
    assert "HTTP 500" in (states["first"].last_error or "")


async def test_failover_when_first_token_stalls(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    first.stall_before_first_token = True
    backends = [openai_backend("first", first), openai_backend("second", second)]
    async with running_gateway(*backends, first_token_timeout=0.5) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    assert events[0] == Started("second")
    assert isinstance(events[-1], Done)
    assert first.client_left.wait(5)


async def test_failover_when_stream_dies_before_first_token(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    first.die_after = 0
    async with running_gateway(
        ollama_backend("first", first.url), openai_backend("second", second)
    ) as gw:
        events = await collect(gw.chat("fake-model", HELLO))

    assert events[0] == Started("second")
    assert answer_text(events) == "".join(DEFAULT_TOKENS)


async def test_backend_dying_mid_stream_fails_partial(fakes: Fakes) -> None:
    fake = fakes()
    fake.die_after = 2
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    assert events[:3] == [Started("vllm"), Token("Hello"), Token(",")]
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.partial is True
    assert "vllm" in failed.message
    assert len(events) == 4


async def test_backend_stalling_mid_stream_fails_partial(fakes: Fakes) -> None:
    fake = fakes()
    fake.stall_after = 1
    async with running_gateway(openai_backend("vllm", fake), first_token_timeout=0.5) as gateway:
        events = await collect(gateway.chat("fake-model", HELLO))

    assert events[:2] == [Started("vllm"), Token("Hello")]
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.partial is True
    assert "ReadTimeout" in failed.message


async def test_client_error_is_not_failed_over(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    first.chat_status = 400
    async with running_gateway(
        openai_backend("first", first), openai_backend("second", second)
    ) as gw:
        events = await collect(gw.chat("fake-model", HELLO))

    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, Failed)
    assert failed.partial is False
    assert failed.status_code == 400
    assert "the fake backend failed" in failed.message
    assert second.chat_requests() == []


async def test_every_backend_failing_fails_without_partial(fakes: Fakes) -> None:
    first, second = fakes(), fakes()
    first.chat_status = second.chat_status = 500
    async with running_gateway(
        openai_backend("first", first), openai_backend("second", second)
    ) as gw:
        events = await collect(gw.chat("fake-model", HELLO))

    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, Failed)
    assert failed.partial is False
    assert failed.status_code == 502
    assert "first: HTTP 500" in failed.message
    assert "second: HTTP 500" in failed.message


async def test_unknown_model_raises_404_naming_known_models(fakes: Fakes) -> None:
    fake = fakes(("alpha:1b", "beta:7b"))
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        with pytest.raises(UnknownModel) as caught:
            await anext(gateway.chat("gamma", HELLO))

    assert caught.value.status_code == 404
    assert "'gamma'" in caught.value.message
    assert "alpha:1b, beta:7b" in caught.value.message
    assert fake.chat_requests() == []


async def test_model_without_tag_matches_latest_on_ollama(fakes: Fakes) -> None:
    fake = fakes(("tiny:latest",))
    async with running_gateway(ollama_backend("ollama", fake.url)) as gateway:
        events = await collect(gateway.chat("tiny", HELLO))

    assert isinstance(events[-1], Done)


async def test_model_of_unhealthy_backend_raises_503(fakes: Fakes) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake), health_interval=60) as gateway:
        fake.stop()
        await collect(gateway.chat("fake-model", HELLO))
        with pytest.raises(NoBackendAvailable) as caught:
            await anext(gateway.chat("fake-model", HELLO))

    assert caught.value.status_code == 503
    assert caught.value.retry_after >= 1
    assert "vllm" in caught.value.message


async def test_unreachable_backend_raises_503_not_404() -> None:
    backend = ollama_backend("engine", closed_port_url())
    async with running_gateway(backend) as gateway:
        with pytest.raises(NoBackendAvailable) as caught:
            await anext(gateway.chat("anything", HELLO))

    assert "has not returned a model list" in caught.value.message
    assert "ConnectError" in caught.value.message


@pytest.mark.parametrize(
    ("messages", "options", "expected"),
    [
        ([], None, "messages is empty"),
        ([{"role": "robot", "content": "Hi"}], None, "messages.0.role = 'robot'"),
        ([{"role": "user"}], None, "messages.0.content: Field required"),
        ([{"role": "user", "content": 7}], None, "messages.0.content: Input should be"),
        ([{"role": "user", "text": "Hi"}], None, "messages.0.text: unknown field"),
        (
            [{"role": "user", "content": "Hi", "name": "x"}],
            None,
            "messages.0.name: unknown field",
        ),
        ([{"role": "user", "content": "\ud800"}], None, "messages.0.content has a lone"),
        (HELLO, {"stop": ["\udfff"]}, "options.stop.0 has a lone surrogate (U+DFFF)"),
        (HELLO, {"temprature": 1}, "options.temprature: unknown field"),
        (HELLO, {"temperature": "hot"}, "options.temperature = 'hot'"),
        (HELLO, {"num_predict": -5}, "options.num_predict = -5"),
    ],
)
async def test_invalid_chat_raises_400(
    fakes: Fakes, messages: list[dict[str, str]], options: dict[str, object] | None, expected: str
) -> None:
    fake = fakes()
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        with pytest.raises(InvalidChatRequest) as caught:
            await anext(gateway.chat("fake-model", messages, options=options))

    assert caught.value.status_code == 400
    assert expected in caught.value.message
    assert fake.chat_requests() == []


async def test_invalid_chat_never_echoes_message_content(fakes: Fakes) -> None:
    fake = fakes()
    messages = [{"role": "user", "content": 12345}, {"content": "secret prompt"}]
    async with running_gateway(openai_backend("vllm", fake)) as gateway:
        with pytest.raises(InvalidChatRequest) as caught:
            await anext(gateway.chat("fake-model", messages))

    assert "12345" not in caught.value.message
    assert "secret prompt" not in caught.value.message


def test_texts_before_stream_error_are_kept() -> None:
    parser = OllamaProtocol().parser()
    lines = [json.dumps({"message": {"content": "Hi"}}), '{"error": "model crashed"}', "{}"]
    texts, error = _parse_lines(parser, lines)

    assert texts == ["Hi"]
    assert isinstance(error, UpstreamError)
    assert str(error) == "model crashed"


async def test_done_precedes_response_end() -> None:
    """The last event does not wait for the response's chunked end, which still ends in time."""
    end_delay = 0.3

    async def slow_ending(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request(reader)
            if head.startswith(b"GET"):
                body = json.dumps({"data": [{"id": "fake-model"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for data in (SSE_TOKEN, SSE_FINISH, b"data: [DONE]\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(end_delay)
            writer.write(b"0\r\n\r\n")

    async with serving(slow_ending) as server:
        backend = Backend(name="slow-end", kind="openai", base_url=server.url.removesuffix("/base"))
        async with running_gateway(backend, health_interval=60) as gateway:
            for _ in range(2):
                started = time.monotonic()
                async with aclosing(gateway.chat("fake-model", HELLO)) as events:
                    async for event in events:
                        if isinstance(event, Done):
                            waited = time.monotonic() - started
                            break

    assert waited < end_delay
    assert server.connections == 1
