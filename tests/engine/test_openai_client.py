"""The official `openai` Python client, unchanged, against the engine's /v1 API."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import BUNDLED_MODEL


@pytest.fixture
def client(engine_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=12,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert (choice.message.content or "").strip()
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        temperature=0,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([text for text in texts if text]) > 2
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish[-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10


def test_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=BUNDLED_MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_completion_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=BUNDLED_MODEL, prompt="Once upon a time", max_tokens=6, stream=True
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert BUNDLED_MODEL in ids
    assert client.models.retrieve(BUNDLED_MODEL).id == BUNDLED_MODEL


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-9" in str(caught.value)


def test_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=BUNDLED_MODEL, input=["one", "two", "three"])
    assert [item.index for item in response.data] == [0, 1, 2]
    assert len(response.data[0].embedding) > 100
    assert response.usage.prompt_tokens > 0


def test_json_response_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Reply with a JSON object about a cat."}],
        response_format={"type": "json_object"},
        max_tokens=40,
        temperature=0,
    )
    assert (completion.choices[0].message.content or "").lstrip().startswith("{")


def test_null_fields_mean_absent(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=None,
        max_completion_tokens=2,
        n=None,
        stream=None,
        stream_options=None,
        temperature=None,
        top_p=None,
        seed=None,
        stop=None,
        presence_penalty=None,
        frequency_penalty=None,
        logprobs=None,
        top_logprobs=None,
        extra_body={"user": None, "response_format": None, "tools": None, "tool_choice": None},
    )
    assert len(completion.choices) == 1
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 2


def test_assistant_refusal_part(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[
            {"role": "user", "content": "Help me."},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Part of it: "},
                    {"type": "refusal", "refusal": "the rest I can't do."},
                ],
            },
            {"role": "user", "content": "Why not?"},
        ],
        max_tokens=2,
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
