"""EngineClient against real engines: the suite's shared one for reads and chat, and one of
this module's own, with a token, for calls that change the store."""

from __future__ import annotations

import hashlib
import inspect
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from llmcloud.engine.client import (
    EngineClient,
    EngineClientError,
    EngineHTTPError,
    EngineStreamError,
    EngineUnreachable,
    ModelNotFoundError,
    sha256_digest,
)
from tests.conftest import BUNDLED_MODEL, RunningServer, start_engine
from tests.engine.gguf_builder import tiny_gguf

if TYPE_CHECKING:
    from tests.engine.registry_fixture import RegistryServer

pytest_plugins = ["tests.engine.registry_fixture"]

TOKEN = "client-test-token"
SHORT_ANSWERS = {"num_predict": 6}


@pytest.fixture(scope="module")
def own_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # One slot, so that a generation that is not cancelled would hold up the next request.
    server = start_engine(
        tmp_path_factory.mktemp("client-engine"), engine_token=TOKEN, engine_num_parallel=1
    )
    yield server
    server.stop()


@pytest.fixture
def own(own_engine: RunningServer) -> Iterator[EngineClient]:
    with EngineClient(own_engine.url, TOKEN) as client:
        yield client


@pytest.fixture
def shared(engine_url: str) -> Iterator[EngineClient]:
    with EngineClient(engine_url) as client:
        yield client


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def names(client: EngineClient) -> set[str]:
    return {str(model["name"]) for model in client.list_models()}


def drain(stream: Iterator[dict[str, object]]) -> list[dict[str, object]]:
    return list(stream)


# Reads


def test_version_is_ollama_api_level(shared: EngineClient) -> None:
    assert shared.version().count(".") == 2


def test_list_models_includes_bundled_model(shared: EngineClient) -> None:
    assert BUNDLED_MODEL in names(shared)


def test_show_returns_details_and_model_info(shared: EngineClient) -> None:
    info = shared.show(BUNDLED_MODEL)

    assert info["details"]["quantization_level"] == "Q4_1"
    assert info["model_info"]["general.architecture"] == "llama"


def test_show_unknown_model_raises_model_not_found(shared: EngineClient) -> None:
    with pytest.raises(ModelNotFoundError) as raised:
        shared.show("no-such-model")

    assert raised.value.status_code == 404
    assert "llmcloud pull no-such-model:latest" in raised.value.message


def test_show_invalid_name_raises_http_error_with_message(shared: EngineClient) -> None:
    with pytest.raises(EngineHTTPError) as raised:
        shared.show("bad..name")

    assert raised.value.status_code == 400
    assert "invalid model name 'bad..name'" in raised.value.message


def test_running_models_lists_loaded_model(shared: EngineClient) -> None:
    drain(shared.chat(BUNDLED_MODEL, []))

    running = shared.running_models()

    assert BUNDLED_MODEL in {model["name"] for model in running}


def test_unreachable_engine_raises_engine_unreachable() -> None:
    url = closed_port_url()

    with EngineClient(url) as client, pytest.raises(EngineUnreachable) as raised:
        client.list_models()

    assert raised.value.url == url
    assert raised.value.message.startswith(f"no engine is running at {url}")


def test_unreachable_engine_raises_on_stream_call() -> None:
    with EngineClient(closed_port_url()) as client, pytest.raises(EngineUnreachable):
        client.chat(BUNDLED_MODEL, [{"role": "user", "content": "hi"}])


# Chat


def test_chat_streams_chunks_until_done(shared: EngineClient) -> None:
    messages = [{"role": "user", "content": "Say hello"}]

    chunks = drain(shared.chat(BUNDLED_MODEL, messages, options=SHORT_ANSWERS))

    assert chunks[-1]["done"] is True
    assert all(chunk["done"] is False for chunk in chunks[:-1])
    # A token can end inside a UTF-8 character, and its text then goes out with the next one.
    assert 1 <= len(chunks) - 1 <= chunks[-1]["eval_count"]


def test_chat_unknown_model_raises_before_streaming(shared: EngineClient) -> None:
    with pytest.raises(ModelNotFoundError):
        shared.chat("no-such-model", [{"role": "user", "content": "hi"}])


def test_chat_closed_early_frees_engine_for_next_request(shared: EngineClient) -> None:
    messages = [{"role": "user", "content": "Tell me a long story"}]
    stream = shared.chat(BUNDLED_MODEL, messages)
    next(stream)

    stream.close()
    chunks = drain(shared.chat(BUNDLED_MODEL, messages, options=SHORT_ANSWERS))

    assert inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED
    assert chunks[-1]["done"] is True


def test_chat_closed_early_cancels_generation(own: EngineClient) -> None:
    long_story = [{"role": "user", "content": "Write a very long story about a dragon."}]
    stream = own.chat(BUNDLED_MODEL, long_story, options={"num_predict": 900})
    next(stream)

    stream.close()
    started = time.monotonic()
    chunks = drain(own.chat(BUNDLED_MODEL, long_story, options=SHORT_ANSWERS))
    elapsed = time.monotonic() - started

    assert chunks[-1]["done"] is True
    # Waiting behind 900 more tokens takes several times longer than the six asked for here.
    assert elapsed < 15


# Token


def test_missing_token_raises_401_with_setting_hint(own_engine: RunningServer) -> None:
    with EngineClient(own_engine.url) as client, pytest.raises(EngineHTTPError) as raised:
        client.list_models()

    assert raised.value.status_code == 401
    assert "LLMCLOUD_ENGINE_TOKEN" in raised.value.message


def test_token_is_sent_as_bearer(own: EngineClient) -> None:
    assert BUNDLED_MODEL in names(own)


# Store changes


def test_copy_and_delete_model(own: EngineClient) -> None:
    own.copy(BUNDLED_MODEL, "copied:v1")
    after_copy = names(own)
    own.delete("copied:v1")

    assert "copied:v1" in after_copy
    assert "copied:v1" not in names(own)


def test_delete_unknown_model_raises_model_not_found(own: EngineClient) -> None:
    with pytest.raises(ModelNotFoundError):
        own.delete("no-such-model")


def test_unload_unknown_model_raises_model_not_found(own: EngineClient) -> None:
    with pytest.raises(ModelNotFoundError):
        own.unload("no-such-model")


def test_pull_from_file_yields_progress_until_success(own: EngineClient, tmp_path: Path) -> None:
    path = tmp_path / "pulled.gguf"
    path.write_bytes(tiny_gguf())

    events = drain(own.pull("pulled:v1", source=str(path)))

    try:
        assert events[-1] == {"status": "success"}
        assert any(event.get("total") == path.stat().st_size for event in events)
        assert "pulled:v1" in names(own)
    finally:
        own.delete("pulled:v1")


def test_pull_from_registry_with_insecure(
    own: EngineClient, registry_server: RegistryServer
) -> None:
    registry_server.add_model("library/tiny:1", tiny_gguf(**{"general.name": "registry"}))
    name = f"{registry_server.host}/library/tiny:1"

    events = drain(own.pull(name, insecure=True))

    try:
        assert events[0] == {"status": "pulling manifest"}
        assert events[-1] == {"status": "success"}
        assert any(str(event.get("digest", "")).startswith("sha256:") for event in events)
    finally:
        own.delete(name)


def test_pull_error_after_stream_start_raises_stream_error(
    own: EngineClient, registry_server: RegistryServer
) -> None:
    registry_server.add_model("library/broken:1", b"these bytes are not a GGUF file")
    name = f"{registry_server.host}/library/broken:1"

    with pytest.raises(EngineStreamError) as raised:
        drain(own.pull(name, insecure=True))

    assert raised.value.message
    assert name not in names(own)


def test_upload_blob_then_create_from_files(own: EngineClient, tmp_path: Path) -> None:
    path = tmp_path / "upload.gguf"
    path.write_bytes(tiny_gguf(**{"general.name": "uploaded blob"}))
    digest = sha256_digest(path)
    seen: list[int] = []

    own.upload_blob(path, digest, seen.append)
    events = drain(own.create("uploaded:v1", files={"upload.gguf": digest}, system="Be brief."))

    try:
        assert own.blob_exists(digest)
        assert seen[-1] == path.stat().st_size
        assert events[-1] == {"status": "success"}
        assert own.show("uploaded:v1")["system"] == "Be brief."
    finally:
        own.delete("uploaded:v1")


def test_upload_blob_with_wrong_digest_is_rejected(own: EngineClient, tmp_path: Path) -> None:
    path = tmp_path / "mismatch.gguf"
    path.write_bytes(tiny_gguf(**{"general.name": "mismatch"}))
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()

    with pytest.raises(EngineHTTPError) as raised:
        own.upload_blob(path, wrong)

    assert raised.value.status_code == 400
    assert not own.blob_exists(wrong)


def test_blob_exists_is_false_for_unknown_digest(own: EngineClient) -> None:
    assert own.blob_exists("sha256:" + "0" * 64) is False


def test_create_from_model_with_parameters(own: EngineClient) -> None:
    events = drain(own.create("tuned", from_=BUNDLED_MODEL, parameters={"temperature": 0.7}))

    try:
        assert events[-1] == {"status": "success"}
        assert "0.7" in own.show("tuned")["parameters"]
    finally:
        own.delete("tuned")


def test_create_with_invalid_parameter_raises_and_saves_nothing(own: EngineClient) -> None:
    with pytest.raises(EngineHTTPError) as raised:
        drain(own.create("invalid", from_=BUNDLED_MODEL, parameters={"Bad-Name": 1}))

    assert raised.value.status_code == 400
    assert "invalid:latest" not in names(own)


# Error bodies that only a misbehaving server sends


def test_non_json_error_body_names_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="upstream down"))

    with (
        EngineClient("http://127.0.0.1:9", transport=transport) as client,
        pytest.raises(EngineHTTPError) as raised,
    ):
        client.list_models()

    assert raised.value.message == "the engine responded with 502 Bad Gateway: upstream down"


def test_openai_style_error_body_is_read() -> None:
    body = {"error": {"message": "quota exceeded", "type": "server_error"}}
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json=body))

    with (
        EngineClient("http://127.0.0.1:9", transport=transport) as client,
        pytest.raises(EngineHTTPError) as raised,
    ):
        client.running_models()

    assert raised.value.message == "quota exceeded"


def test_invalid_json_line_in_stream_raises_client_error() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=b'{"status":"ok"}\nnot json\n')
    )

    with EngineClient("http://127.0.0.1:9", transport=transport) as client:
        stream = client.pull("x")
        first = next(stream)
        with pytest.raises(EngineClientError) as raised:
            next(stream)

    assert first == {"status": "ok"}
    assert "invalid JSON" in raised.value.message
