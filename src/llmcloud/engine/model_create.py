"""Build the manifest for POST /api/create: the layers of a new model and its config blob.

Everything in the request is checked before the first blob is written, so a
rejected request leaves the store as it was.
"""

from __future__ import annotations

import json
import math
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmcloud.engine.errors import BlobNotFound, InvalidRequest
from llmcloud.engine.manifest import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    Layer,
    Manifest,
    check_digest,
)
from llmcloud.engine.names import ModelName

if TYPE_CHECKING:
    from llmcloud.engine.store import ModelStore

_PARAMETER_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
# Parameters that Ollama's Modelfile allows more than once, kept as lists.
_LIST_PARAMETERS = frozenset({"stop"})
# Go's names for the machine, which Ollama's config blob uses.
_GO_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class SourceModel:
    """The model named in `from`: its name, manifest and default parameters."""

    name: ModelName
    manifest: Manifest
    parameters: dict[str, Any]


Scalar = str | int | float | bool


def check_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Check parameter names and values, turning a single `stop` string into a list."""
    checked: dict[str, Any] = {}
    for key, value in parameters.items():
        if not _PARAMETER_NAME.fullmatch(key):
            raise InvalidRequest(
                f"invalid parameter name {key!r}: expected lowercase letters, digits and '_', "
                "as in 'temperature' or 'num_ctx'"
            )
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_plain_value(item) for item in values):
            raise InvalidRequest(
                f"invalid value {value!r} for parameter {key}: expected a string, a finite "
                "number, a boolean, or a non-empty list of them"
            )
        checked[key] = values if key in _LIST_PARAMETERS else value
    return checked


def _is_plain_value(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, Scalar)


def build_manifest(
    store: ModelStore,
    *,
    base: SourceModel | None,
    files: Mapping[str, str] | None,
    texts: Mapping[str, str | list[str] | None],
    parameters: Mapping[str, Any] | None,
    report: Callable[[str], None],
) -> Manifest:
    """Assemble and store the layers and config of a model; return its manifest."""
    if base is None and not files:
        raise InvalidRequest(
            "either 'from' or 'files' is required: name an existing model in 'from', or "
            "upload a GGUF file with POST /api/blobs/<digest> and list it in 'files'"
        )
    checked_texts = {media_type: _text_list(media_type, v) for media_type, v in texts.items()}
    checked_parameters = None if parameters is None else check_parameters(parameters)
    model_digest = _model_digest(store, files, report) if files else None

    layers = list(base.manifest.layers) if base else []
    if model_digest is not None:
        model_layer = Layer(
            MEDIA_TYPE_MODEL, model_digest, store.blob_path(model_digest).stat().st_size
        )
        layers = [model_layer, *(layer for layer in layers if layer.media_type != MEDIA_TYPE_MODEL)]
    elif base is not None:
        layers = [
            replace(layer, from_=base.name.display)
            if layer.media_type == MEDIA_TYPE_MODEL
            else layer
            for layer in layers
        ]
    for layer in layers:
        report(f"using existing layer {layer.digest}")

    for media_type, values in checked_texts.items():
        if values is not None:
            layers = [layer for layer in layers if layer.media_type != media_type]
            layers += [_new_layer(store, media_type, value.encode(), report) for value in values]

    if checked_parameters is not None:
        merged = {**(base.parameters if base else {}), **checked_parameters}
        layers = [layer for layer in layers if layer.media_type != MEDIA_TYPE_PARAMS]
        if merged:
            data = json.dumps(merged, ensure_ascii=False).encode()
            layers.append(_new_layer(store, MEDIA_TYPE_PARAMS, data, report))

    return Manifest(config=_config_layer(store, layers), layers=tuple(layers))


def _text_list(media_type: str, value: str | list[str] | None) -> list[str] | None:
    """Normalise a text field to a list of layer contents; an empty string removes the layer."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in values):
        raise InvalidRequest(f"invalid {_field(media_type)} {value!r}: expected a string")
    if media_type != MEDIA_TYPE_LICENSE and len(values) > 1:
        raise InvalidRequest(f"invalid {_field(media_type)}: expected one string, not a list")
    return [item for item in values if item]


def _field(media_type: str) -> str:
    """Return the request field that fills a layer: `system` for ...image.system."""
    return media_type.rsplit(".", 1)[-1]


def _model_digest(
    store: ModelStore, files: Mapping[str, str], report: Callable[[str], None]
) -> str:
    if len(files) != 1:
        raise InvalidRequest(
            f"'files' lists {len(files)} files; expected exactly one GGUF file, because "
            "safetensors directories and adapters are not supported"
        )
    ((filename, digest),) = files.items()
    check_digest(digest)
    if not store.has_blob(digest):
        raise BlobNotFound(
            f"blob {digest} for file {filename!r} not found; upload it first with "
            f"POST /api/blobs/{digest}"
        )
    report("parsing GGUF")
    store.gguf_info(digest)
    return digest


def _new_layer(
    store: ModelStore, media_type: str, data: bytes, report: Callable[[str], None]
) -> Layer:
    digest, created = store.blobs.write_bytes(data)
    report(f"{'creating new' if created else 'using existing'} layer {digest}")
    return Layer(media_type, digest, len(data))


def _config_layer(store: ModelStore, layers: list[Layer]) -> Layer:
    model_layer = next((layer for layer in layers if layer.media_type == MEDIA_TYPE_MODEL), None)
    if model_layer is None:
        raise InvalidRequest("the model has no GGUF model layer; list a GGUF file in 'files'")
    info = store.gguf_info(model_layer.digest)
    config = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture] if info.architecture else [],
        "model_type": info.parameter_size,
        "file_type": info.quantization_level,
        "architecture": _GO_ARCHITECTURES.get(platform.machine().lower(), platform.machine()),
        "os": platform.system().lower(),
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    data = json.dumps(config, separators=(",", ":")).encode()
    digest, _ = store.blobs.write_bytes(data)
    return Layer(MEDIA_TYPE_CONFIG, digest, len(data))
