"""The engine's model store, laid out like Ollama's.

`<root>/blobs/sha256-<hex>` contains content-addressed blobs (see blobs.py) and
`<root>/manifests/<host>/<namespace>/<model>/<tag>` one manifest per model in
the registry format (see manifest.py). Manifests are written to a temporary
file and renamed into place, so a reader sees the old or the new manifest and
never half of one. Model names are validated by names.py before they become
paths, which keeps `..`, separators and control characters out of the store.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmcloud.engine.blobs import BlobStore, fsync_directory
from llmcloud.engine.errors import (
    BlobNotFound,
    EngineError,
    InvalidModelFile,
    InvalidRequest,
    ModelNotFound,
)
from llmcloud.engine.gguf import GGUFInfo, read_gguf_info
from llmcloud.engine.manifest import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Manifest,
    parse_manifest,
)
from llmcloud.engine.model_create import SourceModel, build_manifest
from llmcloud.engine.names import ModelName, parse_model_name

logger = logging.getLogger("llmcloud.engine")

MAX_TEXT_LAYER_BYTES = 16 << 20
# Unreferenced blobs younger than this survive a garbage collection (see BlobStore).
UPLOAD_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class ModelDetails:
    """The `details` object of /api/tags and /api/show."""

    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: tuple[str, ...] = ()
    parameter_size: str = ""
    quantization_level: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": self.format,
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass(frozen=True)
class ModelEntry:
    """A model in the store, with what the runtime and /api/show need from its layers."""

    name: ModelName
    digest: str
    size: int
    modified_at: datetime
    model_path: Path
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    license: str | None
    details: ModelDetails
    model_info: dict[str, Any] = field(default_factory=dict)


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs")
        self.manifests_dir = root / "manifests"
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        # Held while manifests change and while unreferenced blobs are removed, so that
        # a blob cannot be collected between the check and the write of a new manifest.
        self._lock = threading.RLock()
        self._gguf_cache: dict[str, GGUFInfo] = {}
        self._warned_paths: set[Path] = set()

    # Models

    def list(self) -> list[ModelEntry]:
        """Return every readable model, newest first; damaged manifests are logged and skipped."""
        entries = []
        for name, path in self._manifest_files():
            try:
                entries.append(self._load_entry(name, path))
            except (EngineError, OSError) as exc:
                if path not in self._warned_paths:
                    self._warned_paths.add(path)
                    logger.warning("skipping model %s: %s", name, exc)
        return sorted(entries, key=lambda entry: entry.modified_at, reverse=True)

    def get(self, name: str | ModelName) -> ModelEntry:
        """Return a model, raising ModelNotFound (404) with a hint when there is none."""
        model_name = _parse(name)
        path = self._manifest_path(model_name)
        if not path.is_file():
            raise ModelNotFound(model_name.display, hint=self._not_found_hint(model_name))
        return self._load_entry(model_name, path)

    def exists(self, name: str | ModelName) -> bool:
        return self._manifest_path(_parse(name)).is_file()

    def copy(self, source: str | ModelName, destination: str | ModelName) -> None:
        """Give a model a second name; an existing model of that name is replaced."""
        source_name, destination_name = _parse(source), _parse(destination)
        with self._lock:
            source_path = self._manifest_path(source_name)
            if not source_path.is_file():
                raise ModelNotFound(source_name.display, hint=self._not_found_hint(source_name))
            if source_name != destination_name:
                self.save_manifest(destination_name, source_path.read_bytes())
        logger.info("copied model %s to %s", source_name, destination_name)

    def delete(self, name: str | ModelName) -> None:
        """Remove a model's manifest, then every blob that no manifest references any more."""
        model_name = _parse(name)
        with self._lock:
            path = self._manifest_path(model_name)
            if not path.is_file():
                raise ModelNotFound(model_name.display, hint=self._not_found_hint(model_name))
            candidates = self._digests_of(path)
            path.unlink()
            self._prune_empty_folders(path.parent)
            self._collect_garbage(candidates)
        logger.info("deleted model %s", model_name)

    def create(
        self,
        name: str | ModelName,
        *,
        from_: str | None = None,
        files: dict[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        license: str | builtins.list[str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ModelEntry:
        """Create or replace a model as Ollama's POST /api/create does.

        The model layer comes from `from_` (another model) or `files` (a GGUF
        blob already uploaded); template, system, parameters and license add
        or replace layers. `progress` receives Ollama's status lines.
        """
        model_name = _parse(name)
        report = progress or (lambda status: None)
        base = None
        if from_ is not None:
            report("reading model metadata")
            base_name = _parse(from_)
            base_path = self._manifest_path(base_name)
            if not base_path.is_file():
                raise ModelNotFound(base_name.display, hint=self._not_found_hint(base_name))
            base_manifest = self._read_manifest(base_name, base_path)
            base = SourceModel(
                name=base_name,
                manifest=base_manifest,
                parameters=self._parameters(base_name, base_manifest),
            )

        with self._lock:
            manifest = build_manifest(
                self,
                base=base,
                files=files,
                texts={
                    MEDIA_TYPE_TEMPLATE: template,
                    MEDIA_TYPE_SYSTEM: system,
                    MEDIA_TYPE_LICENSE: license,
                },
                parameters=parameters,
                report=report,
            )
            report("writing manifest")
            self.save_manifest(model_name, manifest.to_bytes())
        report("success")
        logger.info("created model %s", model_name)
        return self.get(model_name)

    def save_manifest(self, name: ModelName, data: bytes) -> None:
        """Write a manifest atomically after checking that all its blobs are present.

        Blobs only the replaced manifest used are removed afterwards.
        """
        manifest = parse_manifest(data, f"model {name}")
        with self._lock:
            missing = sorted(d for d in manifest.digests if not self.blobs.exists(d))
            if missing:
                raise BlobNotFound(
                    f"cannot save model {name}: blobs {', '.join(missing)} are missing; "
                    "upload or pull them again"
                )
            path = self._manifest_path(name)
            replaced = self._digests_of(path) if path.is_file() else set()
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            try:
                with temp.open("xb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
                fsync_directory(path.parent)
            finally:
                temp.unlink(missing_ok=True)
            if replaced:
                self._collect_garbage(replaced - manifest.digests)

    # Blobs

    def referenced_digests(self) -> set[str]:
        """Return the digest of every blob that a readable manifest references."""
        referenced: set[str] = set()
        for _, path in self._manifest_files():
            referenced |= self._digests_of(path)
        return referenced

    def blob_path(self, digest: str) -> Path:
        """Return a blob's path, raising InvalidRequest unless digest is sha256:<64 hex>."""
        return self.blobs.path(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blobs.exists(digest)

    async def write_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> None:
        """Store a blob from a stream, raising InvalidModelFile if it does not match digest."""
        await self.blobs.write(digest, chunks)

    def import_file(self, path: Path) -> str:
        """Copy a local GGUF file into the store (a hard link where possible); return its digest."""
        return self.blobs.import_file(path)

    def gguf_info(self, digest: str) -> GGUFInfo:
        """Return the parsed header of a GGUF blob; blobs never change, so it is cached."""
        info = self._gguf_cache.get(digest)
        if info is None:
            info = read_gguf_info(self.blobs.path(digest))
            self._gguf_cache[digest] = info
        return info

    # Internals

    def _load_entry(self, name: ModelName, path: Path) -> ModelEntry:
        data = path.read_bytes()
        manifest = self._read_manifest(name, path, data)
        model_layer = manifest.layer(MEDIA_TYPE_MODEL)
        if model_layer is None:
            raise _damaged(name, "its manifest has no model layer")
        if not self.blobs.exists(model_layer.digest):
            raise _damaged(name, f"its model blob {model_layer.digest} is missing")

        try:
            info = self.gguf_info(model_layer.digest)
        except InvalidModelFile as exc:
            raise _damaged(name, exc.message) from None
        return ModelEntry(
            name=name,
            digest=hashlib.sha256(data).hexdigest(),
            size=manifest.size,
            modified_at=datetime.fromtimestamp(path.stat().st_mtime, tz=UTC),
            model_path=self.blobs.path(model_layer.digest),
            template=self._text_layer(manifest, MEDIA_TYPE_TEMPLATE),
            system=self._text_layer(manifest, MEDIA_TYPE_SYSTEM),
            parameters=self._parameters(name, manifest),
            license=self._text_layer(manifest, MEDIA_TYPE_LICENSE),
            details=self._details(manifest, info, model_layer.from_),
            # Arrays the reader skipped appear empty, as in Ollama's /api/show.
            model_info={**info.metadata, **{key: [] for key in info.array_lengths}},
        )

    def _read_manifest(self, name: ModelName, path: Path, data: bytes | None = None) -> Manifest:
        try:
            return parse_manifest(path.read_bytes() if data is None else data, f"model {name}")
        except InvalidModelFile as exc:
            raise _damaged(name, exc.message) from None

    def _text_layer(self, manifest: Manifest, media_type: str) -> str | None:
        layers = manifest.layers_of(media_type)
        if not layers:
            return None
        return "\n".join(
            self.blobs.read_text(layer.digest, MAX_TEXT_LAYER_BYTES) for layer in layers
        )

    def _parameters(self, name: ModelName, manifest: Manifest) -> dict[str, Any]:
        layer = manifest.layer(MEDIA_TYPE_PARAMS)
        if layer is None:
            return {}
        text = self.blobs.read_text(layer.digest, MAX_TEXT_LAYER_BYTES)
        try:
            parameters = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _damaged(name, f"its parameters are not valid JSON: {exc}") from None
        if not isinstance(parameters, dict):
            raise _damaged(name, "its parameters are not a JSON object")
        return parameters

    def _details(self, manifest: Manifest, info: GGUFInfo, parent: str) -> ModelDetails:
        config: dict[str, Any] = {}
        if self.blobs.exists(manifest.config.digest):
            try:
                loaded = json.loads(self.blobs.read_text(manifest.config.digest, 1 << 20))
                config = loaded if isinstance(loaded, dict) else {}
            except (InvalidModelFile, json.JSONDecodeError):
                config = {}

        def text(key: str, fallback: str) -> str:
            value = config.get(key)
            return value if isinstance(value, str) and value else fallback

        families = config.get("model_families")
        if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
            families = [info.architecture] if info.architecture else []
        return ModelDetails(
            parent_model=parent,
            format=text("model_format", "gguf"),
            family=text("model_family", info.architecture),
            families=tuple(families),
            parameter_size=text("model_type", info.parameter_size),
            quantization_level=text("file_type", info.quantization_level),
        )

    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.parts)

    def _manifest_files(self) -> builtins.list[tuple[ModelName, Path]]:
        found = []
        for path in self.manifests_dir.glob("*/*/*/*"):
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            try:
                name = parse_model_name(f"{host}/{namespace}/{model}:{tag}")
            except InvalidRequest:
                continue
            if name.parts == (host, namespace, model, tag) and path.is_file():
                found.append((name, path))
        return found

    def _not_found_hint(self, name: ModelName) -> str:
        hint = f"run `llmcloud pull {name.display}`"
        names = sorted(found.display for found, _ in self._manifest_files())
        if names:
            shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
            hint += f" or use one of: {shown}"
        return hint

    def _digests_of(self, path: Path) -> set[str]:
        try:
            return parse_manifest(path.read_bytes(), str(path)).digests
        except (InvalidModelFile, OSError):
            return set()

    def _collect_garbage(self, candidates: set[str]) -> None:
        referenced: set[str] = set()
        for name, path in self._manifest_files():
            try:
                referenced |= parse_manifest(path.read_bytes(), str(path)).digests
            except (InvalidModelFile, OSError) as exc:
                # Its references are unknown, so removing anything could break it.
                logger.warning("not removing unused blobs: cannot read model %s: %s", name, exc)
                return
        self.blobs.remove_unreferenced(referenced, candidates, UPLOAD_GRACE_SECONDS)
        for digest in candidates - referenced:
            self._gguf_cache.pop(digest, None)

    def _prune_empty_folders(self, folder: Path) -> None:
        while folder != self.manifests_dir and folder.is_relative_to(self.manifests_dir):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _parse(name: str | ModelName) -> ModelName:
    return name if isinstance(name, ModelName) else parse_model_name(name)


def _damaged(name: ModelName, reason: str) -> EngineError:
    return EngineError(
        f"model {name} is damaged: {reason}; remove it with `llmcloud rm {name}` and pull it again"
    )
