"""Chats longer than the context, with the real model, on /api/chat and /v1/chat/completions.

The test engine runs with a context of 1,024 tokens. The expected prompt sizes come from
the bundled model's own tokenizer and chat template, outside the engine, by trying every
cut in turn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import BUNDLED_MODEL
from tests.engine.bundled_tokenizer import BundledTokenizer

NUM_CTX = 1024
SYSTEM = {"role": "system", "content": "You are an old sailor. Answer in one short sentence."}
QUESTION = {"role": "user", "content": "Which harbour should I visit first?"}
QUICK = {"temperature": 0, "seed": 1, "num_predict": 8}


def turns(count: int) -> list[dict[str, Any]]:
    """Pairs of user and assistant messages about numbered harbours, about 50 tokens a pair."""
    messages = []
    for index in range(count):
        messages.append({"role": "user", "content": f"Tell me about harbour number {index}."})
        messages.append(
            {
                "role": "assistant",
                "content": f"Harbour {index} is a calm place with old wooden ships, narrow "
                "quays, quiet green water and a lighthouse that sailors trust at night.",
            }
        )
    return messages


LONG_CHAT = [SYSTEM, *turns(50), QUESTION]


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[BundledTokenizer]:
    bundled = BundledTokenizer()
    yield bundled
    bundled.close()


def expected_prompt_tokens(
    tokenizer: BundledTokenizer, messages: list[dict[str, Any]], limit: int
) -> int:
    """Prompt size once the oldest messages after the system message are dropped to fit."""
    for start in range(1, len(messages)):
        size = len(tokenizer([messages[0], *messages[start:]]))
        if size <= limit:
            return size
    raise AssertionError("even the last message does not fit")


def chat_longer_than(tokenizer: BundledTokenizer, size: int) -> list[dict[str, Any]]:
    """The shortest chat of SYSTEM, whole turns and QUESTION whose prompt is over `size` tokens."""
    count = 1
    while len(tokenizer([SYSTEM, *turns(count), QUESTION])) <= size:
        count += 1
    return [SYSTEM, *turns(count), QUESTION]


def error_message(response: httpx.Response) -> str:
    error = response.json()["error"]
    message: str = error["message"] if isinstance(error, dict) else error
    return message


def post_chat(engine_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(engine_url + path, json={"model": BUNDLED_MODEL, **body}, timeout=120)


def test_long_chat_is_longer_than_context(tokenizer: BundledTokenizer) -> None:
    assert len(tokenizer(LONG_CHAT)) > 2 * NUM_CTX


def test_ollama_client_answers_long_chat(engine_url: str, tokenizer: BundledTokenizer) -> None:
    client = ollama.Client(host=engine_url)

    response = client.chat(model=BUNDLED_MODEL, messages=LONG_CHAT, options=QUICK)

    assert response.done is True
    assert response.eval_count
    assert response.prompt_eval_count == expected_prompt_tokens(tokenizer, LONG_CHAT, NUM_CTX - 8)


def test_chat_keeps_front_system_message(engine_url: str, tokenizer: BundledTokenizer) -> None:
    response = post_chat(
        engine_url, "/api/chat", {"messages": LONG_CHAT, "options": QUICK, "stream": False}
    )
    assert response.status_code == 200, response.text
    prompt_tokens = response.json()["prompt_eval_count"]

    # Without a system message, the template adds its own default one of another length.
    without_system = [len(tokenizer(LONG_CHAT[start:])) for start in range(1, len(LONG_CHAT))]
    assert prompt_tokens not in without_system
    assert prompt_tokens == expected_prompt_tokens(tokenizer, LONG_CHAT, NUM_CTX - 8)


@pytest.mark.parametrize("truncate", [True, None])
def test_chat_truncate_true_or_null(
    engine_url: str, tokenizer: BundledTokenizer, truncate: bool | None
) -> None:
    body = {"messages": LONG_CHAT, "options": QUICK, "stream": False, "truncate": truncate}

    response = post_chat(engine_url, "/api/chat", body)

    assert response.status_code == 200, response.text
    expected = expected_prompt_tokens(tokenizer, LONG_CHAT, NUM_CTX - 8)
    assert response.json()["prompt_eval_count"] == expected


def test_chat_streams_answer_to_long_chat(engine_url: str) -> None:
    client = ollama.Client(host=engine_url)

    chunks = list(client.chat(model=BUNDLED_MODEL, messages=LONG_CHAT, options=QUICK, stream=True))

    assert chunks[-1].done is True
    assert chunks[-1].prompt_eval_count
    assert chunks[-1].prompt_eval_count <= NUM_CTX - 8


def test_chat_without_truncate_is_rejected(engine_url: str, tokenizer: BundledTokenizer) -> None:
    body = {"messages": LONG_CHAT, "options": QUICK, "truncate": False}

    response = post_chat(engine_url, "/api/chat", body)

    assert response.status_code == 400
    message = error_message(response)
    assert f"the prompt is {len(tokenizer(LONG_CHAT))} tokens" in message
    assert f"context of {NUM_CTX} tokens" in message
    assert "raise options.num_ctx" in message


def test_chat_room_follows_num_predict(engine_url: str, tokenizer: BundledTokenizer) -> None:
    chat = chat_longer_than(tokenizer, NUM_CTX - 128)
    whole = len(tokenizer(chat))
    assert whole <= NUM_CTX - 8

    short = post_chat(
        engine_url, "/api/chat", {"messages": chat, "options": QUICK, "stream": False}
    )
    longer = post_chat(
        engine_url,
        "/api/chat",
        {"messages": chat, "options": {**QUICK, "num_predict": 128}, "stream": False},
    )

    assert short.json()["prompt_eval_count"] == whole
    expected = expected_prompt_tokens(tokenizer, chat, NUM_CTX - 128)
    assert longer.json()["prompt_eval_count"] == expected


def test_default_room_is_quarter_of_context(engine_url: str, tokenizer: BundledTokenizer) -> None:
    chat = chat_longer_than(tokenizer, NUM_CTX - NUM_CTX // 4)
    assert len(tokenizer(chat)) < NUM_CTX
    # No num_predict, so the answer may fill the context; the stop strings end it early.
    options = {"temperature": 0, "seed": 1, "stop": ["\n", "."]}

    response = post_chat(
        engine_url, "/api/chat", {"messages": chat, "options": options, "stream": False}
    )

    assert response.status_code == 200, response.text
    expected = expected_prompt_tokens(tokenizer, chat, NUM_CTX - NUM_CTX // 4)
    assert response.json()["prompt_eval_count"] == expected


def test_dropped_messages_are_logged(engine_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine_logger = logging.getLogger("llmcloud.engine")
    caplog.set_level(logging.INFO, logger="llmcloud.engine")
    # Attached directly, because a configured "llmcloud" logger does not propagate.
    engine_logger.addHandler(caplog.handler)
    try:
        post_chat(engine_url, "/api/chat", {"messages": LONG_CHAT, "options": QUICK})
    finally:
        engine_logger.removeHandler(caplog.handler)

    records = [record for record in caplog.records if "chat messages" in record.getMessage()]
    assert records
    assert records[0].name == "llmcloud.engine"
    assert records[0].levelno == logging.INFO
    assert f"of {len(LONG_CHAT)} chat messages for model {BUNDLED_MODEL}" in records[0].getMessage()
    assert f"num_ctx {NUM_CTX}" in records[0].getMessage()


def test_openai_client_answers_long_chat(engine_url: str, tokenizer: BundledTokenizer) -> None:
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)

    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=LONG_CHAT,
        max_tokens=8,
        temperature=0,
    )

    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    expected = expected_prompt_tokens(tokenizer, LONG_CHAT, NUM_CTX - 8)
    assert completion.usage.prompt_tokens == expected


def test_openai_overlong_last_message_is_rejected(engine_url: str) -> None:
    chat = [SYSTEM, *turns(2), {"role": "user", "content": "word " * 3000}]

    response = post_chat(engine_url, "/v1/chat/completions", {"messages": chat, "max_tokens": 8})

    assert response.status_code == 400
    message = error_message(response)
    assert "even without the oldest 4 messages" in message
    assert f"context of {NUM_CTX} tokens" in message
    assert "shorten the messages or use a model with a longer context" in message
    assert "num_ctx" not in message


def test_openai_client_gets_400_for_overlong_message(engine_url: str) -> None:
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=BUNDLED_MODEL, messages=[{"role": "user", "content": "word " * 3000}]
        )

    assert "use a model with a longer context" in str(caught.value)


def test_openai_overlong_prompt_names_no_option(engine_url: str) -> None:
    response = post_chat(engine_url, "/v1/completions", {"prompt": "word " * 3000})

    assert response.status_code == 400
    message = error_message(response)
    assert "shorten the prompt or use a model with a longer context" in message
    assert "num_ctx" not in message


def test_ollama_overlong_last_message_is_rejected(engine_url: str) -> None:
    chat = [SYSTEM, *turns(2), {"role": "user", "content": "word " * 3000}]

    response = post_chat(engine_url, "/api/chat", {"messages": chat, "options": QUICK})

    assert response.status_code == 400
    message = error_message(response)
    assert "even without the oldest 4 messages" in message
    assert "raise options.num_ctx" in message
