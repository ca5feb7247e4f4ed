"""Build small synthetic GGUF files for tests: a header, metadata and tensor infos, no data."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llmcloud.engine.gguf import ValueType

_FORMATS = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}

TINY_METADATA: dict[str, Any] = {
    "general.architecture": "llama",
    "general.name": "tiny test model",
    "general.file_type": (ValueType.UINT32, 3),
    "llama.context_length": (ValueType.UINT32, 2048),
    "llama.rope.freq_base": (ValueType.FLOAT32, 10000.0),
    "tokenizer.ggml.tokens": [f"token{i}" for i in range(40)],
    "tokenizer.ggml.bos_token_id": (ValueType.UINT32, 1),
}
TINY_TENSORS: list[tuple[str, tuple[int, ...]]] = [
    ("token_embd.weight", (64, 40)),
    ("output_norm.weight", (64,)),
]


def encode_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def infer_type(value: Any) -> ValueType:
    if isinstance(value, bool):
        return ValueType.BOOL
    if isinstance(value, int):
        return ValueType.UINT32 if 0 <= value < 2**32 else ValueType.INT64
    if isinstance(value, float):
        return ValueType.FLOAT64
    if isinstance(value, str):
        return ValueType.STRING
    if isinstance(value, list):
        return ValueType.ARRAY
    raise TypeError(f"no GGUF type for {value!r}")


def encode_value(value_type: ValueType, value: Any) -> bytes:
    """Encode a value without its type code."""
    if value_type == ValueType.STRING:
        return encode_string(value)
    if value_type == ValueType.ARRAY:
        item_type = infer_type(value[0]) if value else ValueType.INT32
        items = b"".join(encode_value(item_type, item) for item in value)
        return struct.pack("<IQ", item_type, len(value)) + items
    return struct.pack("<" + _FORMATS[value_type], value)


def gguf_bytes(
    metadata: Mapping[str, Any] | None = None,
    *,
    tensors: Iterable[tuple[str, tuple[int, ...]]] = (),
    version: int = 3,
    magic: bytes = b"GGUF",
) -> bytes:
    """Return a GGUF file. A metadata value is a Python value or a (ValueType, value) pair."""
    metadata = TINY_METADATA if metadata is None else metadata
    tensor_list = list(tensors)
    parts = [magic, struct.pack("<IQQ", version, len(tensor_list), len(metadata))]
    for key, raw in metadata.items():
        value_type, value = raw if isinstance(raw, tuple) else (infer_type(raw), raw)
        parts += [
            encode_string(key),
            struct.pack("<I", value_type),
            encode_value(value_type, value),
        ]
    for name, shape in tensor_list:
        parts += [encode_string(name), struct.pack("<I", len(shape))]
        parts += [struct.pack("<Q", dim) for dim in shape]
        parts.append(struct.pack("<IQ", 0, 0))
    return b"".join(parts)


def tiny_gguf(**metadata: Any) -> bytes:
    """A small valid GGUF with TINY_METADATA, updated by keyword (dots written as __)."""
    values = dict(TINY_METADATA)
    values.update({key.replace("__", "."): value for key, value in metadata.items()})
    return gguf_bytes(values, tensors=TINY_TENSORS)


def write_gguf(path: Path, data: bytes | None = None) -> Path:
    path.write_bytes(tiny_gguf() if data is None else data)
    return path
