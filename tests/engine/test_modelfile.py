"""Parsing of Modelfiles for `llmcloud create`."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmcloud.engine.modelfile import (
    ModelfileError,
    local_model_file,
    parameter_value,
    parse_modelfile,
)


def test_parse_reads_every_supported_instruction() -> None:
    modelfile = parse_modelfile(
        "# comment\n"
        "FROM smollm2:135m\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER stop User:\n"
        "PARAMETER use_mmap false\n"
        'TEMPLATE """{{ .Prompt }}"""\n'
        'SYSTEM "You are \\"Mario\\"."\n'
        "LICENSE MIT\n"
        'LICENSE """Apache-2.0\n'
        'second line"""\n'
    )

    assert modelfile.from_ == "smollm2:135m"
    assert modelfile.parameters == {
        "temperature": 0.7,
        "num_ctx": 4096,
        "stop": ["<|im_end|>", "User:"],
        "use_mmap": False,
    }
    assert modelfile.template == "{{ .Prompt }}"
    assert modelfile.system == 'You are "Mario".'
    assert modelfile.licenses == ["MIT", "Apache-2.0\nsecond line"]


def test_parse_accepts_lowercase_instructions_and_byte_order_mark() -> None:
    modelfile = parse_modelfile("\ufefffrom ./model.gguf\nsystem Be brief.\n")

    assert modelfile.from_ == "./model.gguf"
    assert modelfile.system == "Be brief."


def test_parse_keeps_block_lines_and_blank_lines() -> None:
    modelfile = parse_modelfile('FROM m\nSYSTEM """\nOne.\n\nTwo.\n"""\n')

    assert modelfile.system == "\nOne.\n\nTwo.\n"


def test_parse_later_system_replaces_earlier() -> None:
    assert parse_modelfile("FROM m\nSYSTEM a\nSYSTEM b\n").system == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SYSTEM hi\n", "the Modelfile has no FROM line"),
        ("FROM a\nFROM b\n", "line 2: a second FROM"),
        ("FROM a\nBOGUS x\n", "line 2: unknown instruction 'BOGUS'"),
        ("FROM a\nADAPTER ./lora.gguf\n", "line 2: ADAPTER is not supported"),
        ("FROM a\nMESSAGE user hi\n", "line 2: MESSAGE is not supported"),
        ("FROM a\nSYSTEM\n", "line 2: SYSTEM has no value"),
        ("FROM a\nPARAMETER\n", "line 2: PARAMETER needs a name and a value"),
        ("FROM a\nPARAMETER num_ctx\n", "line 2: PARAMETER num_ctx has no value"),
        ("FROM a\nPARAMETER colour red\n", "line 2: unknown parameter 'colour'"),
        ("FROM a\nPARAMETER top_k 4.5\n", "invalid value '4.5' for parameter top_k"),
        ("FROM a\nPARAMETER temperature hot\n", "parameter temperature: expected a finite"),
        ("FROM a\nPARAMETER temperature nan\n", "invalid value 'nan' for parameter temperature"),
        ("FROM a\nPARAMETER use_mmap maybe\n", "expected true or false"),
        ('FROM a\nSYSTEM "unclosed\n', 'line 2: SYSTEM value "unclosed has no closing quote'),
        ('FROM a\nSYSTEM """never\nclosed\n', 'line 2: SYSTEM opens a """ block'),
        ('FROM a\nSYSTEM """x""" extra\n', "line 2: unexpected text 'extra'"),
    ],
)
def test_parse_rejects_invalid_modelfile(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as raised:
        parse_modelfile(text)

    assert message in raised.value.message
    assert raised.value.status_code == 400


def test_parameter_value_converts_by_option_type() -> None:
    assert parameter_value("seed", "42") == 42
    assert parameter_value("top_p", "0.9") == 0.9
    assert parameter_value("use_mmap", "TRUE") is True
    assert parameter_value("stop", "###") == "###"


def test_local_model_file_resolves_relative_to_modelfile_folder(tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")

    assert local_model_file("./weights.gguf", tmp_path) == tmp_path / "weights.gguf"
    assert local_model_file("weights.gguf", tmp_path) == tmp_path / "weights.gguf"


def test_local_model_file_is_none_for_model_name(tmp_path: Path) -> None:
    assert local_model_file("smollm2:135m", tmp_path) is None


def test_local_model_file_rejects_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError) as raised:
        local_model_file("./absent.gguf", tmp_path)

    assert f"file {tmp_path / 'absent.gguf'} not found" in raised.value.message


def test_local_model_file_rejects_folder(tmp_path: Path) -> None:
    (tmp_path / "safetensors").mkdir()

    with pytest.raises(ModelfileError) as raised:
        local_model_file("./safetensors", tmp_path)

    assert "is a folder" in raised.value.message
