from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from llmcloud.engine.errors import InvalidModelFile, InvalidRequest, ModelNotFound, PullError
from llmcloud.engine.pull import PullProgress, pull_model, resolve_source
from llmcloud.engine.store import ModelStore
from tests.engine.gguf_builder import tiny_gguf

if TYPE_CHECKING:
    from tests.engine.registry_fixture import RegistryServer

pytest_plugins = ["tests.engine.registry_fixture"]

pytestmark = pytest.mark.anyio

TINY = tiny_gguf()
TINY_DIGEST = "sha256:" + hashlib.sha256(TINY).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


async def pull_all(
    store: ModelStore, source: str, registry: RegistryServer, **options: object
) -> list[PullProgress]:
    events = pull_model(store, source, registry=registry.url, **options)  # type: ignore[arg-type]
    return [event async for event in events]


def leftovers(store: ModelStore) -> list[str]:
    names = (path.name for path in store.blobs.directory.iterdir())
    return sorted(name for name in names if name.endswith(("-partial", ".tmp")))


async def test_pull_registry_model(store: ModelStore, registry_server: RegistryServer) -> None:
    registry_server.add_model("tiny:1", TINY, template="{{ .Prompt }}")

    events = await pull_all(store, "tiny:1", registry_server)

    entry = store.get("tiny:1")
    assert entry.model_path.read_bytes() == TINY
    assert entry.template == "{{ .Prompt }}"
    assert (
        entry.digest
        == hashlib.sha256(registry_server.manifests[("library", "tiny", "1")]).hexdigest()
    )
    assert events[0].status == "pulling manifest"
    assert [e.status for e in events[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]


async def test_pull_progress_names_blobs(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)

    events = await pull_all(store, "tiny:1", registry_server)

    model_events = [e for e in events if e.digest == TINY_DIGEST]
    assert model_events[0].status == f"pulling {TINY_DIGEST[7:19]}"
    assert model_events[-1].completed == len(TINY)
    assert model_events[-1].total == len(TINY)
    assert model_events[-1].to_json() == {
        "status": f"pulling {TINY_DIGEST[7:19]}",
        "digest": TINY_DIGEST,
        "total": len(TINY),
        "completed": len(TINY),
    }


async def test_pull_sends_manifest_accept_header(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)

    await pull_all(store, "tiny:1", registry_server)

    accept = registry_server.requests[0].headers["accept"]
    assert accept == "application/vnd.docker.distribution.manifest.v2+json"


async def test_pull_skips_blobs_already_present(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)
    await pull_all(store, "tiny:1", registry_server)
    registry_server.requests.clear()

    await pull_all(store, "tiny:1", registry_server)

    assert registry_server.blob_requests() == []


async def test_pull_unknown_model_is_not_found(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await pull_all(store, "missing:1", registry_server)

    assert "/v2/library/missing/manifests/1" in caught.value.message
    assert not store.exists("missing:1")


async def test_pull_rejects_bad_digest(store: ModelStore, registry_server: RegistryServer) -> None:
    manifest = registry_server.add_model("tiny:1", TINY)
    registry_server.replace_blob(manifest.layers[0].digest, TINY[:-1] + b"!")

    with pytest.raises(InvalidModelFile, match="digest mismatch"):
        await pull_all(store, "tiny:1", registry_server)

    assert not store.has_blob(TINY_DIGEST)
    assert not store.exists("tiny:1")
    assert leftovers(store) == []


async def test_pull_rejects_oversized_blob(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    manifest = registry_server.add_model("tiny:1", TINY)
    registry_server.replace_blob(manifest.layers[0].digest, TINY + b"extra")

    with pytest.raises(InvalidModelFile, match="larger than"):
        await pull_all(store, "tiny:1", registry_server)

    assert leftovers(store) == []


async def test_pull_rejects_non_gguf_model(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    page = b"<html>this is not a model</html>"
    registry_server.add_model("page:1", page)

    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        await pull_all(store, "page:1", registry_server)

    assert not store.has_blob("sha256:" + hashlib.sha256(page).hexdigest())
    assert not store.exists("page:1")
    assert leftovers(store) == []


async def test_pull_resumes_truncated_download(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)
    registry_server.truncate_next_at = 100

    with pytest.raises(PullError, match="pull again to resume"):
        await pull_all(store, "tiny:1", registry_server)
    assert leftovers(store) == [TINY_DIGEST.replace(":", "-") + "-partial"]

    registry_server.requests.clear()
    await pull_all(store, "tiny:1", registry_server)

    model_requests = [r for r in registry_server.blob_requests() if TINY_DIGEST in r.path]
    assert model_requests[0].headers["range"] == "bytes=100-"
    assert store.get("tiny:1").model_path.read_bytes() == TINY
    assert leftovers(store) == []


async def test_pull_restarts_when_server_ignores_range(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)
    registry_server.truncate_next_at = 100
    with pytest.raises(PullError):
        await pull_all(store, "tiny:1", registry_server)

    registry_server.ignore_range = True
    await pull_all(store, "tiny:1", registry_server)

    assert store.get("tiny:1").model_path.read_bytes() == TINY


async def test_pull_discards_corrupt_partial(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)
    store.blobs.partial_path(TINY_DIGEST).write_bytes(b"garbage!" * 10)

    with pytest.raises(InvalidModelFile, match="digest mismatch"):
        await pull_all(store, "tiny:1", registry_server)
    assert leftovers(store) == []

    await pull_all(store, "tiny:1", registry_server)

    assert store.get("tiny:1").model_path.read_bytes() == TINY


async def test_pull_follows_blob_redirects(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)
    registry_server.redirect_blobs = True

    await pull_all(store, "tiny:1", registry_server)

    assert any(r.path.startswith("/cdn/") for r in registry_server.requests)
    assert store.exists("tiny:1")


async def test_pull_name_with_host_uses_that_host(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("team/tiny:1", TINY)
    name = f"{registry_server.host}/team/tiny:1"

    events = pull_model(store, name, registry="http://127.0.0.1:9", insecure=True)
    _ = [event async for event in events]

    assert store.get(name).name.host == registry_server.host


async def test_pull_unreachable_registry_names_url(store: ModelStore) -> None:
    events = pull_model(store, "tiny:1", registry="http://127.0.0.1:9")

    with pytest.raises(PullError) as caught:
        _ = [event async for event in events]

    assert "http://127.0.0.1:9/v2/library/tiny/manifests/1" in caught.value.message
    assert caught.value.status_code == 502


async def test_concurrent_pulls_share_download(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_model("tiny:1", TINY)

    await asyncio.gather(*(pull_all(store, "tiny:1", registry_server) for _ in range(3)))

    model_requests = [r for r in registry_server.blob_requests() if TINY_DIGEST in r.path]
    assert len(model_requests) == 1
    assert store.get("tiny:1").model_path.read_bytes() == TINY


async def test_pull_url_names_model_after_file(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    url = registry_server.add_file("Tiny-Model.Q4_1.gguf", TINY)

    events = await pull_all(store, url, registry_server)

    assert store.get("tiny-model.q4_1:latest").model_path.read_bytes() == TINY
    assert events[0].status == "pulling Tiny-Model.Q4_1.gguf"
    assert events[-1].status == "success"


async def test_pull_url_with_given_name(store: ModelStore, registry_server: RegistryServer) -> None:
    url = registry_server.add_file("model.gguf", TINY)

    await pull_all(store, url, registry_server, name="mine:v2")

    assert store.exists("mine:v2")


async def test_pull_url_rejects_non_gguf(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    url = registry_server.add_file("fake.gguf", b"<html>login page</html>")

    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        await pull_all(store, url, registry_server)

    assert list(store.blobs.directory.iterdir()) == []
    assert not store.exists("fake")


async def test_pull_url_not_found(store: ModelStore, registry_server: RegistryServer) -> None:
    with pytest.raises(ModelNotFound, match="HTTP 404"):
        await pull_all(store, f"{registry_server.url}/files/missing.gguf", registry_server)


async def test_pull_local_file(
    store: ModelStore, tmp_path: Path, registry_server: RegistryServer
) -> None:
    path = tmp_path / "Local.gguf"
    path.write_bytes(TINY)

    events = await pull_all(store, str(path), registry_server)

    assert store.get("local").model_path.read_bytes() == TINY
    assert events[-1].status == "success"


async def test_pull_local_missing_file(
    store: ModelStore, tmp_path: Path, registry_server: RegistryServer
) -> None:
    with pytest.raises(InvalidRequest, match="not found"):
        await pull_all(store, str(tmp_path / "missing.gguf"), registry_server)


async def test_pull_local_non_gguf(
    store: ModelStore, tmp_path: Path, registry_server: RegistryServer
) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("not a model")

    with pytest.raises(InvalidModelFile):
        await pull_all(store, str(path), registry_server)

    assert list(store.blobs.directory.iterdir()) == []


async def test_pull_bundled_model_from_registry(
    store: ModelStore, registry_server: RegistryServer
) -> None:
    registry_server.add_bundled_model()

    await pull_all(store, "smollm2:135m", registry_server)

    entry = store.get("smollm2:135m")
    assert entry.details.quantization_level == "Q4_1"
    assert entry.parameters["stop"] == ["<|im_end|>"]


async def test_pull_uses_given_client(store: ModelStore, registry_server: RegistryServer) -> None:
    registry_server.add_model("tiny:1", TINY)
    async with httpx.AsyncClient(headers={"User-Agent": "given-client"}) as client:
        events = pull_model(store, "tiny:1", registry=registry_server.url, client=client)
        _ = [event async for event in events]
        assert not client.is_closed

    assert registry_server.requests[0].headers["user-agent"] == "given-client"


@pytest.mark.parametrize(
    ("source", "kind", "name"),
    [
        ("smollm2:135m", "registry", "smollm2:135m"),
        ("https://example.org/m/Model.Q8_0.gguf", "url", "model.q8_0:latest"),
        ("http://example.org/m/a%2Db.gguf", "url", "a-b:latest"),
        ("/srv/models/x.gguf", "file", "x:latest"),
        ("./x.gguf", "file", "x:latest"),
        ("../x", "file", "x:latest"),
        ("models/x.gguf", "file", "x:latest"),
    ],
)
def test_resolve_source_classifies(source: str, kind: str, name: str) -> None:
    resolved = resolve_source(source)

    assert resolved.kind == kind
    assert resolved.name.display == name


@pytest.mark.parametrize(
    "source",
    [
        "a/../b:1",
        "a\\b",
        "x\x00",
        "",
        "https:///nohost.gguf",
        "http://[::1/x.gguf",
        "/srv/My Model.gguf",
    ],
)
def test_resolve_source_rejects_bad_sources(source: str) -> None:
    with pytest.raises(InvalidRequest):
        resolve_source(source)


def test_resolve_source_rejects_bad_given_name() -> None:
    with pytest.raises(InvalidRequest):
        resolve_source("https://example.org/x.gguf", "../escape")
