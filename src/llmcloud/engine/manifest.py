"""Manifests in the registry format that Ollama's store and registry use.

A manifest is Docker's image manifest v2 (schemaVersion 2): one config blob
and a list of layers, each named by the sha256 digest of its content. The
layers' media types say what each blob is: the GGUF model, the prompt
template, the system prompt, the default parameters (JSON) or a license.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llmcloud.engine.errors import InvalidModelFile, InvalidRequest

MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_MODEL = "application/vnd.ollama.image.model"
MEDIA_TYPE_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_TYPE_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_TYPE_PARAMS = "application/vnd.ollama.image.params"
MEDIA_TYPE_LICENSE = "application/vnd.ollama.image.license"

# Manifests are small JSON documents; anything larger is not one.
MAX_MANIFEST_BYTES = 4 << 20
MAX_LAYERS = 1000

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: object) -> str:
    """Return the digest after checking it is `sha256:` and 64 lowercase hex digits."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidRequest(
            f"invalid digest {digest!r}: expected 'sha256:' followed by 64 lowercase hex digits"
        )
    return digest


@dataclass(frozen=True)
class Layer:
    """One blob of a manifest: its media type, digest and size in bytes."""

    media_type: str
    digest: str
    size: int
    from_: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        data["size"] = self.size
        if self.from_:
            data["from"] = self.from_
        return data


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        """Bytes of the config and every layer, the size that /api/tags reports."""
        return self.config.size + sum(layer.size for layer in self.layers)

    @property
    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def layer(self, media_type: str) -> Layer | None:
        """Return the first layer of the media type, or None."""
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def to_bytes(self) -> bytes:
        document = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Parse and check manifest JSON, raising InvalidModelFile that names `source`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidModelFile(
            f"manifest from {source} is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}"
        )
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelFile(f"manifest from {source} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidModelFile(f"manifest from {source} is not a JSON object")
    if document.get("schemaVersion") != 2:
        raise InvalidModelFile(
            f"manifest from {source} has schemaVersion {document.get('schemaVersion')!r}; "
            "expected 2"
        )

    layers = document.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise InvalidModelFile(
            f"manifest from {source} needs a list of at most {MAX_LAYERS} layers"
        )
    return Manifest(
        config=_parse_layer(document.get("config"), source),
        layers=tuple(_parse_layer(layer, source) for layer in layers),
    )


def _parse_layer(value: object, source: str) -> Layer:
    if not isinstance(value, dict):
        raise InvalidModelFile(f"manifest from {source} has a layer that is not a JSON object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    from_ = value.get("from", "")

    if not isinstance(media_type, str) or not media_type:
        raise InvalidModelFile(f"manifest from {source} has a layer without a mediaType")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidModelFile(f"manifest from {source} has an invalid layer digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidModelFile(
            f"manifest from {source} has an invalid size {size!r} for layer {digest}"
        )
    if not isinstance(from_, str):
        raise InvalidModelFile(f"manifest from {source} has an invalid 'from' in layer {digest}")
    return Layer(media_type=media_type, digest=digest, size=size, from_=from_)
