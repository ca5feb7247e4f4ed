from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import ollama
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llmcloud.engine.errors import EngineError
from llmcloud.engine.model_routes import router
from llmcloud.engine.store import ModelStore
from llmcloud.settings import Settings
from tests.engine.gguf_builder import tiny_gguf

if TYPE_CHECKING:
    from tests.engine.registry_fixture import RegistryServer

pytest_plugins = ["tests.engine.registry_fixture"]

pytestmark = pytest.mark.anyio

TINY = tiny_gguf()
TINY_DIGEST = "sha256:" + hashlib.sha256(TINY).hexdigest()


class RecordingScheduler:
    def __init__(self) -> None:
        self.unloaded: list[str] = []

    async def unload(self, name: str) -> bool:
        self.unloaded.append(name)
        return True


def make_app(data_dir: Path, registry_url: str) -> FastAPI:
    """The model routes alone, with the state and error handling the engine's app provides."""
    app = FastAPI()
    app.include_router(router)
    app.state.store = ModelStore(data_dir / "models")
    app.state.settings = Settings(data_dir=data_dir, engine_registry=registry_url)
    app.state.scheduler = RecordingScheduler()

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": str(exc.errors())}, 400)

    return app


@pytest.fixture
def app(tmp_path: Path, registry_server: RegistryServer) -> FastAPI:
    return make_app(tmp_path, registry_server.url)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
        yield client


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


async def upload_tiny(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/api/blobs/{TINY_DIGEST}", content=TINY)
    assert response.status_code == 201


async def create_tiny(client: httpx.AsyncClient, name: str = "tiny:1", **fields: Any) -> None:
    await upload_tiny(client)
    body = {"model": name, "files": {"tiny.gguf": TINY_DIGEST}, "stream": False, **fields}
    response = await client.post("/api/create", json=body)
    assert response.status_code == 200, response.text


async def test_tags_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tags")

    assert response.json() == {"models": []}


async def test_tags_lists_model(client: httpx.AsyncClient, app: FastAPI) -> None:
    await create_tiny(client)

    (model,) = (await client.get("/api/tags")).json()["models"]

    assert model["name"] == "tiny:1"
    assert model["model"] == "tiny:1"
    assert model["digest"] == app.state.store.get("tiny:1").digest
    assert model["details"]["quantization_level"] == "Q4_1"
    assert model["details"]["family"] == "llama"
    assert model["size"] > len(TINY)
    assert "modified_at" in model


async def test_show_returns_ollama_fields(client: httpx.AsyncClient) -> None:
    await create_tiny(
        client, template="{{ .Prompt }}", system="Be brief.", parameters={"stop": ["</s>", "END"]}
    )

    shown = (await client.post("/api/show", json={"model": "tiny:1"})).json()

    assert shown["template"] == "{{ .Prompt }}"
    assert shown["system"] == "Be brief."
    assert shown["capabilities"] == ["completion"]
    assert shown["details"]["format"] == "gguf"
    assert (
        shown["parameters"]
        == 'stop                           "</s>"\nstop                           "END"'
    )
    assert 'PARAMETER stop "</s>"' in shown["modelfile"]
    assert "FROM " in shown["modelfile"]


async def test_show_model_info_hides_long_arrays(client: httpx.AsyncClient) -> None:
    await create_tiny(client)

    info = (await client.post("/api/show", json={"model": "tiny:1"})).json()["model_info"]

    assert info["tokenizer.ggml.tokens"] == []
    assert info["llama.context_length"] == 2048
    assert "general.name" not in info


async def test_show_verbose_includes_arrays(client: httpx.AsyncClient) -> None:
    await create_tiny(client)

    response = await client.post("/api/show", json={"model": "tiny:1", "verbose": True})

    assert len(response.json()["model_info"]["tokenizer.ggml.tokens"]) == 40


async def test_show_accepts_name_key(client: httpx.AsyncClient) -> None:
    await create_tiny(client)

    response = await client.post("/api/show", json={"name": "tiny:1"})

    assert response.status_code == 200


async def test_show_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/show", json={"model": "llama9"})

    assert response.status_code == 404
    assert "llmcloud pull llama9" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "model is required"),
        ({"model": "../etc/passwd"}, "invalid model name"),
        ({"model": "a\\b"}, "invalid model name"),
        ({"model": 5}, "model"),
    ],
)
async def test_show_rejects_bad_body(
    client: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/api/show", json=body)

    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_show_rejects_invalid_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/show", content=b"{not json")

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


async def test_blob_upload_then_head(client: httpx.AsyncClient) -> None:
    await upload_tiny(client)

    assert (await client.head(f"/api/blobs/{TINY_DIGEST}")).status_code == 200
    assert (await client.post(f"/api/blobs/{TINY_DIGEST}", content=TINY)).status_code == 200


async def test_blob_head_unknown_is_404(client: httpx.AsyncClient) -> None:
    response = await client.head("/api/blobs/sha256:" + "0" * 64)

    assert response.status_code == 404


async def test_blob_upload_rejects_digest_mismatch(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/api/blobs/{TINY_DIGEST}", content=b"other bytes")

    assert response.status_code == 400
    assert "digest mismatch" in response.json()["error"]
    assert (await client.head(f"/api/blobs/{TINY_DIGEST}")).status_code == 404


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256-" + "a" * 64, "SHA256:" + "a" * 64])
async def test_blob_routes_reject_bad_digest(client: httpx.AsyncClient, digest: str) -> None:
    response = await client.post(f"/api/blobs/{digest}", content=b"x")

    assert response.status_code == 400
    assert "invalid digest" in response.json()["error"]


async def test_create_streams_statuses(client: httpx.AsyncClient) -> None:
    await upload_tiny(client)

    response = await client.post(
        "/api/create", json={"model": "tiny", "files": {"tiny.gguf": TINY_DIGEST}}
    )

    statuses = [line["status"] for line in lines(response)]
    assert response.headers["content-type"] == "application/x-ndjson"
    assert statuses[0] == "parsing GGUF"
    assert statuses[-2:] == ["writing manifest", "success"]


async def test_create_without_stream_returns_success(client: httpx.AsyncClient) -> None:
    await upload_tiny(client)

    body = {"model": "tiny", "files": {"tiny.gguf": TINY_DIGEST}, "stream": False}
    response = await client.post("/api/create", json=body)

    assert response.json() == {"status": "success"}


async def test_create_from_model(client: httpx.AsyncClient, app: FastAPI) -> None:
    await create_tiny(client)

    body = {"model": "mario", "from": "tiny:1", "system": "You are Mario.", "stream": False}
    response = await client.post("/api/create", json=body)

    assert response.status_code == 200
    assert app.state.store.get("mario").system == "You are Mario."


async def test_create_rejects_quantize(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "from": "tiny:1", "quantize": "q4_K_M"}
    response = await client.post("/api/create", json=body)

    assert response.status_code == 400
    assert "quantize 'q4_K_M' is not supported" in response.json()["error"]


async def test_create_unknown_blob_is_404(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "files": {"tiny.gguf": TINY_DIGEST}}
    response = await client.post("/api/create", json=body)

    assert response.status_code == 404
    assert "upload it first" in response.json()["error"]


async def test_create_failure_keeps_existing_model(client: httpx.AsyncClient, app: FastAPI) -> None:
    await create_tiny(client, system="kept")
    page = b"<html></html>"
    page_digest = "sha256:" + hashlib.sha256(page).hexdigest()
    await client.post(f"/api/blobs/{page_digest}", content=page)

    body = {"model": "tiny:1", "files": {"page.gguf": page_digest}}
    response = await client.post("/api/create", json=body)

    assert response.status_code == 400
    assert app.state.store.get("tiny:1").system == "kept"


async def test_copy_model(client: httpx.AsyncClient, app: FastAPI) -> None:
    await create_tiny(client)

    response = await client.post("/api/copy", json={"source": "tiny:1", "destination": "backup"})

    assert response.status_code == 200
    assert response.content == b""
    assert app.state.store.exists("backup")


async def test_copy_unknown_source_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/copy", json={"source": "missing", "destination": "x"})

    assert response.status_code == 404


async def test_copy_requires_destination(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/copy", json={"source": "tiny:1"})

    assert response.status_code == 400
    assert "destination" in response.json()["error"]


async def test_copy_rejects_traversal_destination(client: httpx.AsyncClient) -> None:
    await create_tiny(client)

    response = await client.post("/api/copy", json={"source": "tiny:1", "destination": "../x"})

    assert response.status_code == 400


async def test_delete_model_unloads_it(client: httpx.AsyncClient, app: FastAPI) -> None:
    await create_tiny(client)

    response = await client.request("DELETE", "/api/delete", json={"model": "tiny:1"})

    assert response.status_code == 200
    assert not app.state.store.exists("tiny:1")
    assert app.state.scheduler.unloaded == ["tiny:1"]


async def test_delete_accepts_name_key(client: httpx.AsyncClient, app: FastAPI) -> None:
    await create_tiny(client)

    response = await client.request("DELETE", "/api/delete", json={"name": "tiny:1"})

    assert response.status_code == 200


async def test_delete_unknown_model_is_404(client: httpx.AsyncClient, app: FastAPI) -> None:
    response = await client.request("DELETE", "/api/delete", json={"model": "missing"})

    assert response.status_code == 404
    assert app.state.scheduler.unloaded == []


async def test_pull_streams_progress(
    client: httpx.AsyncClient, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)

    response = await client.post("/api/pull", json={"model": "tiny:1"})

    statuses = [line["status"] for line in lines(response)]
    assert statuses[0] == "pulling manifest"
    assert f"pulling {TINY_DIGEST[7:19]}" in statuses
    assert statuses[-1] == "success"


async def test_pull_without_stream(
    client: httpx.AsyncClient, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)

    response = await client.post("/api/pull", json={"model": "tiny:1", "stream": False})

    assert response.json() == {"status": "success"}


async def test_pull_unknown_model_is_404_when_streaming(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/pull", json={"model": "missing:1"})

    assert response.status_code == 404
    assert "missing:1" in response.json()["error"]


async def test_pull_error_after_start_is_last_line(
    client: httpx.AsyncClient, registry_server: RegistryServer, app: FastAPI
) -> None:
    manifest = registry_server.add_model("tiny:1", TINY)
    registry_server.replace_blob(manifest.layers[0].digest, TINY[:-1] + b"!")

    response = await client.post("/api/pull", json={"model": "tiny:1"})

    body = lines(response)
    assert response.status_code == 200
    assert body[0] == {"status": "pulling manifest"}
    assert "digest mismatch" in body[-1]["error"]
    assert not app.state.store.exists("tiny:1")


async def test_pull_from_url(
    client: httpx.AsyncClient, registry_server: RegistryServer, app: FastAPI
) -> None:
    url = registry_server.add_file("tiny.gguf", TINY)

    body = {"model": "mine:v1", "from": url, "stream": False}
    response = await client.post("/api/pull", json=body)

    assert response.json() == {"status": "success"}
    assert app.state.store.get("mine:v1").model_path.read_bytes() == TINY


async def test_pull_from_local_path(
    client: httpx.AsyncClient, tmp_path: Path, app: FastAPI
) -> None:
    path = tmp_path / "local.gguf"
    path.write_bytes(TINY)

    body = {"model": "local-copy", "from": str(path), "stream": False}
    response = await client.post("/api/pull", json=body)

    assert response.status_code == 200
    assert app.state.store.exists("local-copy")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("a/../b", "invalid model name"),
        ("a\\b", "invalid model name"),
        ("x\x01y", "invalid model name"),
        ("../x", "not a model name"),
        ("https://example.org/x.gguf", "not a model name"),
    ],
)
async def test_pull_rejects_bad_name(client: httpx.AsyncClient, model: str, message: str) -> None:
    response = await client.post("/api/pull", json={"model": model})

    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_pull_from_rejects_bad_name(client: httpx.AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(TINY)

    response = await client.post("/api/pull", json={"model": "../x", "from": str(path)})

    assert response.status_code == 400
    assert "invalid model name" in response.json()["error"]


async def test_ollama_client_manages_models(
    app: FastAPI, registry_server: RegistryServer, tmp_path: Path
) -> None:
    registry_server.add_model("tiny:1", TINY)
    transport = httpx.ASGITransport(app=app)
    client = ollama.AsyncClient(host="http://engine", transport=transport)

    await client.pull("tiny:1")
    await client.copy("tiny:1", "tiny:copy")
    await client.create("derived", from_="tiny:copy", system="Be brief.")
    shown = await client.show("derived")
    listed = await client.list()
    await client.delete("tiny:copy")

    assert shown.details is not None
    assert shown.details.quantization_level == "Q4_1"
    assert sorted(model.model or "" for model in listed.models) == [
        "derived:latest",
        "tiny:1",
        "tiny:copy",
    ]
    assert not app.state.store.exists("tiny:copy")


async def test_ollama_client_uploads_blob_and_creates(app: FastAPI, tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(TINY)
    client = ollama.AsyncClient(host="http://engine", transport=httpx.ASGITransport(app=app))

    digest = await client.create_blob(path)
    await client.create("from-file", files={"tiny.gguf": digest})

    assert app.state.store.get("from-file").model_path.read_bytes() == TINY


async def test_ollama_client_sees_missing_model_error(app: FastAPI) -> None:
    client = ollama.AsyncClient(host="http://engine", transport=httpx.ASGITransport(app=app))

    with pytest.raises(ollama.ResponseError) as caught:
        await client.show("missing")

    assert caught.value.status_code == 404
