"""A pure-Python reader for the header of GGUF model files.

GGUF (llama.cpp's model format, ggml's docs/gguf.md) starts with the magic
`GGUF`, a uint32 version, a uint64 tensor count and a uint64 key/value count,
all little endian, followed by the metadata key/values and the tensor infos.
Model files come from the network, so every length read from the file is
checked against the bytes that remain and against fixed maximums before
anything is allocated from it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from llmcloud.engine.errors import InvalidModelFile

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

# The same limits as Ollama's fs/gguf reader: 16 MiB per string, 64 Mi items per array.
MAX_STRING_LENGTH = 16 << 20
MAX_ARRAY_LENGTH = 64 << 20
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS in ggml.h
MAX_ARRAY_DEPTH = 8

# Arrays longer than this are left out of GGUFInfo.metadata unless the caller asks for them.
DEFAULT_MAX_ARRAY_ITEMS = 1024

_READ_BUFFER_BYTES = 1 << 16


class ValueType(IntEnum):
    """Type codes of GGUF metadata values."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS: dict[ValueType, str] = {
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

# llama.cpp's llama_ftype values, as `general.file_type` stores them; the names are the
# quantization levels that Ollama's /api/tags shows (Ollama's fs/ggml/type.go).
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


@dataclass(frozen=True)
class GGUFInfo:
    """The header of a GGUF file: version, tensor count and metadata.

    Arrays longer than the reader's limit are not in `metadata`; `array_lengths`
    maps their keys to their item counts instead.
    """

    version: int
    tensor_count: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""

    @property
    def quantization_level(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if not isinstance(file_type, int):
            return ""
        return FILE_TYPE_NAMES.get(file_type, f"unknown file type {file_type}")

    @property
    def parameter_size(self) -> str:
        count = self.metadata.get("general.parameter_count")
        if not isinstance(count, int) or count <= 0:
            count = self.parameter_count
        return format_parameter_count(count) if count > 0 else ""


def format_parameter_count(count: int) -> str:
    """Format a parameter count the way Ollama shows it: 134.52M, 7.6B, 8B, 500K."""
    if count >= 1_000_000_000:
        number = count / 1_000_000_000
        return f"{number:.0f}B" if number.is_integer() else f"{number:.1f}B"
    if count >= 1_000_000:
        number = count / 1_000_000
        return f"{number:.0f}M" if number.is_integer() else f"{number:.2f}M"
    if count >= 1_000:
        return f"{count / 1_000:.0f}K"
    return str(count)


def is_gguf(path: Path) -> bool:
    """Return whether the file starts with the GGUF magic (a cheap check, not a full read)."""
    try:
        with path.open("rb") as file:
            return file.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_info(
    path: Path, *, max_array_items: int | None = DEFAULT_MAX_ARRAY_ITEMS
) -> GGUFInfo:
    """Read the header, metadata and tensor infos of a GGUF file.

    Top-level arrays with more than `max_array_items` items are skipped and
    recorded in `GGUFInfo.array_lengths`; None keeps every array. Raises
    InvalidModelFile naming the file and the reason when it is not a valid GGUF.
    """
    try:
        size = path.stat().st_size
        with path.open("rb", buffering=_READ_BUFFER_BYTES) as file:
            return _Parser(file, size, path, max_array_items).parse()
    except OSError as exc:
        raise InvalidModelFile(f"cannot read model file {path}: {exc.strerror or exc}") from None


def _shortest_float32(value: float) -> float:
    """Round a float32 widened to float64 to the shortest decimal that maps back to it.

    Without this, 1e-05 stored as float32 reads as 9.999999747378752e-06.
    """
    exact = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == exact:
            return candidate
    return value


class _Parser:
    def __init__(self, file: BinaryIO, size: int, path: Path, max_array_items: int | None) -> None:
        self._file = file
        self._size = size
        self._position = 0
        self._path = path
        self._max_array_items = max_array_items
        self._array_lengths: dict[str, int] = {}

    def parse(self) -> GGUFInfo:
        version, tensor_count, kv_count = self._read_header()

        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = self._read_string("metadata key")
            value_type = self._read_value_type(key)
            value = self._read_value(key, value_type, depth=0, keep=True)
            if key in self._array_lengths:
                metadata.pop(key, None)
            else:
                metadata[key] = value

        parameter_count = sum(self._read_tensor_element_count() for _ in range(tensor_count))
        return GGUFInfo(
            version=version,
            tensor_count=tensor_count,
            metadata=metadata,
            array_lengths=dict(self._array_lengths),
            parameter_count=parameter_count,
        )

    def _read_header(self) -> tuple[int, int, int]:
        magic = self._read(4, "magic")
        if magic != GGUF_MAGIC:
            self._fail(f"not a GGUF file: expected magic b'GGUF', found {magic!r}")

        version = self._unpack("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and version >> 24 in SUPPORTED_VERSIONS:
                self._fail("big-endian GGUF files are not supported")
            self._fail(f"GGUF version {version} is not supported; expected 2 or 3")

        tensor_count = self._unpack("<Q", "tensor count")
        kv_count = self._unpack("<Q", "metadata count")

        # A key/value takes at least 12 bytes (key length and value type) and a tensor
        # info at least 24, so larger counts than the file can hold are corrupt.
        self._check_count(kv_count, 12, "metadata count")
        self._check_count(tensor_count, 24, "tensor count")
        return version, tensor_count, kv_count

    def _read_value(self, key: str, value_type: ValueType, depth: int, keep: bool) -> Any:
        if value_type == ValueType.STRING:
            return self._read_string(f"value of {key}")
        if value_type == ValueType.ARRAY:
            return self._read_array(key, depth + 1, keep)
        value = self._unpack("<" + _SCALAR_FORMATS[value_type], f"value of {key}")
        return _shortest_float32(value) if value_type == ValueType.FLOAT32 else value

    def _read_array(self, key: str, depth: int, keep: bool) -> list[Any] | None:
        if depth > MAX_ARRAY_DEPTH:
            self._fail(f"arrays in {key} are nested deeper than {MAX_ARRAY_DEPTH} levels")
        item_type = self._read_value_type(key)
        length = self._unpack("<Q", f"array length of {key}")
        if length > MAX_ARRAY_LENGTH:
            self._fail(f"array {key} has {length} items, more than the maximum {MAX_ARRAY_LENGTH}")

        # The item limit applies to top-level arrays; nested ones go with their parent.
        if depth == 1 and self._max_array_items is not None and length > self._max_array_items:
            self._array_lengths[key] = length
            keep = False

        if item_type in _SCALAR_FORMATS:
            item_format = _SCALAR_FORMATS[item_type]
            item_size = struct.calcsize("<" + item_format)
            if not keep:
                self._skip(length * item_size, f"array {key}")
                return None
            data = self._read(length * item_size, f"array {key}")
            return list(struct.unpack(f"<{length}{item_format}", data))

        # Strings and nested arrays have variable sizes and are read one by one.
        self._check_count(length, 8 if item_type == ValueType.STRING else 12, f"array {key}")
        items = []
        for _ in range(length):
            item = self._read_value(key, item_type, depth, keep)
            if keep:
                items.append(item)
        return items if keep else None

    def _read_tensor_element_count(self) -> int:
        name = self._read_string("tensor name")
        dims = self._unpack("<I", f"dimension count of tensor {name}")
        if dims > MAX_TENSOR_DIMS:
            self._fail(f"tensor {name} has {dims} dimensions, more than {MAX_TENSOR_DIMS}")
        count = 1
        for _ in range(dims):
            count *= self._unpack("<Q", f"shape of tensor {name}")
        self._read(4 + 8, f"type and offset of tensor {name}")
        return count

    def _read_value_type(self, key: str) -> ValueType:
        code = self._unpack("<I", f"value type of {key}")
        try:
            return ValueType(code)
        except ValueError:
            self._fail(f"metadata {key} has unknown value type {code}")

    def _read_string(self, what: str) -> str:
        length = self._unpack("<Q", f"length of {what}")
        if length > MAX_STRING_LENGTH:
            self._fail(f"{what} is {length} bytes long, more than the maximum {MAX_STRING_LENGTH}")
        return self._read(length, what).decode("utf-8", errors="replace")

    def _check_count(self, count: int, min_item_bytes: int, what: str) -> None:
        if count * min_item_bytes > self._size - self._position:
            self._fail(
                f"{what} {count} does not fit in the {self._size - self._position} bytes left"
            )

    def _unpack(self, layout: str, what: str) -> Any:
        return struct.unpack(layout, self._read(struct.calcsize(layout), what))[0]

    def _read(self, length: int, what: str) -> bytes:
        self._require(length, what)
        data = self._file.read(length)
        if len(data) != length:
            self._fail(f"truncated while reading {what}")
        self._position += length
        return data

    def _skip(self, length: int, what: str) -> None:
        self._require(length, what)
        self._file.seek(length, 1)
        self._position += length

    def _require(self, length: int, what: str) -> None:
        if length > self._size - self._position:
            self._fail(
                f"truncated: {what} needs {length} bytes at offset {self._position}, "
                f"but the file has {self._size} bytes"
            )

    def _fail(self, reason: str) -> NoReturn:
        raise InvalidModelFile(f"invalid GGUF file {self._path}: {reason}")
