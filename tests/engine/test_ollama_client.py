"""The official `ollama` Python client, unchanged, against a running engine and the real model."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import ollama
import pytest

from tests.conftest import BUNDLED_MODEL

if TYPE_CHECKING:
    from tests.engine.registry_fixture import RegistryServer

pytest_plugins = ["tests.engine.registry_fixture"]

QUICK = {"temperature": 0, "num_predict": 12, "seed": 1}


@pytest.fixture
def client(engine_url: str) -> ollama.Client:
    return ollama.Client(host=engine_url)


def test_chat_returns_answer(client: ollama.Client) -> None:
    response = client.chat(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options=QUICK,
    )
    assert response.message.role == "assistant"
    assert response.message.content.strip()
    assert response.done is True
    assert response.done_reason in ("stop", "length")
    assert response.eval_count
    assert response.eval_count > 0
    assert response.prompt_eval_count
    assert response.prompt_eval_count > 0
    assert response.total_duration
    assert response.total_duration > 0


def test_chat_streams_pieces(client: ollama.Client) -> None:
    chunks = list(
        client.chat(
            model=BUNDLED_MODEL,
            messages=[{"role": "user", "content": "Count from one to ten."}],
            options={**QUICK, "num_predict": 20},
            stream=True,
        )
    )
    assert len(chunks) > 3
    assert all(chunk.done is False for chunk in chunks[:-1])
    assert chunks[-1].done is True
    assert chunks[-1].done_reason == "length"
    assert chunks[-1].eval_count == 20
    assert "".join(chunk.message.content for chunk in chunks[:-1]).strip()


def test_generate_returns_context(client: ollama.Client) -> None:
    response = client.generate(model=BUNDLED_MODEL, prompt="Say hello.", options=QUICK)
    assert response.response.strip()
    assert response.context
    follow_up = client.generate(
        model=BUNDLED_MODEL, prompt="Again.", context=response.context, options=QUICK
    )
    assert follow_up.prompt_eval_count
    assert follow_up.prompt_eval_count > len(response.context)


def test_generate_streams(client: ollama.Client) -> None:
    chunks = list(
        client.generate(model=BUNDLED_MODEL, prompt="Tell a story.", options=QUICK, stream=True)
    )
    assert chunks[-1].done is True
    assert chunks[-1].eval_duration
    assert chunks[-1].eval_duration > 0
    assert len(chunks) == QUICK["num_predict"] + 1 or chunks[-1].done_reason == "stop"


def test_generate_raw_prompt(client: ollama.Client) -> None:
    response = client.generate(
        model=BUNDLED_MODEL, prompt="The capital of France is", raw=True, options=QUICK
    )
    assert response.response


def test_generate_json_format(client: ollama.Client) -> None:
    response = client.generate(
        model=BUNDLED_MODEL,
        prompt="Give a JSON object with a name and an age.",
        format="json",
        options={"temperature": 0, "num_predict": 60},
    )
    text = response.response
    if response.done_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


def test_generate_schema_format(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
    }
    response = client.generate(
        model=BUNDLED_MODEL,
        prompt="Describe the weather in Paris as JSON.",
        format=schema,
        options={"temperature": 0, "num_predict": 80},
    )
    data = json.loads(response.response)
    assert set(data) == {"city", "sunny"}
    assert isinstance(data["sunny"], bool)


def test_stop_sequence_ends_answer(client: ollama.Client) -> None:
    response = client.generate(
        model=BUNDLED_MODEL,
        prompt="1, 2, 3, 4, 5, 6, 7",
        raw=True,
        options={"temperature": 0, "num_predict": 30, "stop": ["10"]},
    )
    assert "10" not in response.response
    assert response.done_reason == "stop"


def test_list_shows_bundled_model(client: ollama.Client) -> None:
    names = [model.model for model in client.list().models]
    assert BUNDLED_MODEL in names


def test_show_describes_model(client: ollama.Client) -> None:
    response = client.show(BUNDLED_MODEL)
    assert response.details is not None
    assert response.details.format == "gguf"
    assert response.details.quantization_level == "Q4_1"
    assert response.modelinfo is not None
    assert response.modelinfo["general.architecture"] == "llama"


def test_ps_lists_loaded_model(client: ollama.Client) -> None:
    client.generate(model=BUNDLED_MODEL, prompt="Hi", options={"num_predict": 1})
    names = [model.model for model in client.ps().models]
    assert BUNDLED_MODEL in names


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy(BUNDLED_MODEL, "copied:test")
    assert "copied:test" in [model.model for model in client.list().models]
    answer = client.generate(model="copied:test", prompt="Hi", options={"num_predict": 2})
    assert answer.done is True
    client.delete("copied:test")
    assert "copied:test" not in [model.model for model in client.list().models]
    assert BUNDLED_MODEL in [model.model for model in client.list().models]


def test_unknown_model_raises_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama9:70b", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert "llama9:70b" in caught.value.error


def test_embed_returns_unit_vectors(client: ollama.Client) -> None:
    response = client.embed(model=BUNDLED_MODEL, input=["first text", "second text"])
    assert len(response.embeddings) == 2
    assert len(response.embeddings[0]) == len(response.embeddings[1]) > 100
    assert math.isclose(sum(x * x for x in response.embeddings[0]), 1.0, rel_tol=1e-3)
    assert response.embeddings[0] != response.embeddings[1]


def test_embeddings_legacy_endpoint(client: ollama.Client) -> None:
    response = client.embeddings(model=BUNDLED_MODEL, prompt="some text")
    assert len(response.embedding) > 100


def test_pull_from_local_registry(client: ollama.Client, registry_server: RegistryServer) -> None:
    registry_server.add_bundled_model("pulled:1")
    name = f"{registry_server.host}/library/pulled:1"

    progress = list(client.pull(name, insecure=True, stream=True))

    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    assert any(p.total and p.completed == p.total for p in progress)
    answer = client.generate(model=name, prompt="Hi", options={"num_predict": 2})
    assert answer.done is True
    client.delete(name)
    assert name not in [model.model for model in client.list().models]
