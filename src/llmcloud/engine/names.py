"""Model names in Ollama's form: `[host/][namespace/]model[:tag]`.

A name becomes a path in the model store, so every part is checked against a
strict pattern before use: no `..`, no path separators inside a part, no
control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmcloud.engine.errors import InvalidRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}(:[0-9]{1,5})?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        """The short form that `ollama list` shows: `model:tag` for library models."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)


def parse_model_name(text: object) -> ModelName:
    """Parse and validate a model name, raising InvalidRequest with the reason."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("model name is required, for example 'smollm2:135m'")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise InvalidRequest(f"invalid model name {text!r}: control characters are not allowed")
    if "\\" in text or ".." in text or text.startswith("/") or "//" in text:
        raise InvalidRequest(
            f"invalid model name {text!r}: expected [host/][namespace/]model[:tag] "
            "without '..', '\\' or empty parts"
        )

    rest, tag = text, DEFAULT_TAG
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]

    parts = rest.split("/")
    if len(parts) > 3:
        raise InvalidRequest(
            f"invalid model name {text!r}: expected at most host/namespace/model:tag"
        )
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    model = parts[-1]

    for label, value, pattern in (
        ("host", host, _HOST),
        ("namespace", namespace, _PART),
        ("model", model, _PART),
        ("tag", tag, _TAG),
    ):
        if not pattern.fullmatch(value):
            raise InvalidRequest(
                f"invalid model name {text!r}: {label} {value!r} may contain only letters, "
                "digits, '_', '.' and '-'"
            )
    return ModelName(host=host, namespace=namespace.lower(), model=model.lower(), tag=tag)
