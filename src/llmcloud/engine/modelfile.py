"""Parsing of Ollama's Modelfile format for `llmcloud create`.

A Modelfile is one instruction per line: `FROM`, `PARAMETER`, `TEMPLATE`,
`SYSTEM` and `LICENSE` are read; `#` starts a comment line; instruction
names are case-insensitive. A value is the rest of the line, a `"..."`
string on one line, or a `\"\"\"...\"\"\"` block that may span lines. Parameter
values are converted to the types Ollama's options have (see the Modelfile
reference in Ollama's docs/modelfile.mdx), so that the engine gets numbers,
not strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcloud.engine.errors import InvalidRequest

SUPPORTED_INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "LICENSE")
# Instructions of Ollama's Modelfile that llmcloud's engine cannot carry out.
UNSUPPORTED_INSTRUCTIONS = {
    "ADAPTER": "LoRA adapters are not supported; merge the adapter into the GGUF file first",
    "MESSAGE": "stored messages are not supported; send the messages with each chat request",
    "REQUIRES": "version requirements are not supported",
    "RENDERER": "custom renderers are not supported",
    "PARSER": "custom parsers are not supported",
    "DRAFT": "draft models are not supported",
}

# The value type of every option that Ollama's Modelfile accepts as PARAMETER.
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_thread": int,
    "num_keep": int,
    "num_predict": int,
    "seed": int,
    "top_k": int,
    "repeat_last_n": int,
    "temperature": float,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "use_mmap": bool,
    "stop": list,
}

_BLOCK_QUOTE = '"""'
_PATH_PREFIXES = ("/", "./", "../", "~")


class ModelfileError(InvalidRequest):
    """A Modelfile that cannot be parsed or used; the message names the line."""


@dataclass
class Modelfile:
    """The parts of a parsed Modelfile that POST /api/create takes."""

    from_: str
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)


def parse_modelfile(text: str) -> Modelfile:
    """Parse a Modelfile, raising ModelfileError with the line number of the first problem."""
    lines = text.removeprefix("\ufeff").splitlines()
    found: dict[str, Any] = {"parameters": {}, "licenses": []}
    index = 0
    while index < len(lines):
        number = index + 1
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        instruction, _, rest = stripped.partition(" ")
        instruction = instruction.upper()
        _check_instruction(instruction, number)
        if instruction == "PARAMETER":
            name, _, rest = rest.strip().partition(" ")
            if not name:
                raise ModelfileError(
                    f"line {number}: PARAMETER needs a name and a value, as in "
                    "`PARAMETER temperature 0.7`"
                )
            value, index = _read_value(rest, lines, index, f"PARAMETER {name}")
            _add_parameter(found["parameters"], name, value, number)
        else:
            value, index = _read_value(rest, lines, index, instruction)
            _apply(found, instruction, value, number)
        index += 1

    if "from" not in found:
        raise ModelfileError(
            "the Modelfile has no FROM line; add `FROM <model name>` or "
            "`FROM <path of a .gguf file>`"
        )
    return Modelfile(
        from_=found["from"],
        parameters=found["parameters"],
        template=found.get("template"),
        system=found.get("system"),
        licenses=found["licenses"],
    )


def local_model_file(source: str, base_dir: Path) -> Path | None:
    """Return the GGUF file that a FROM value names, or None when it names a model.

    Relative paths are relative to the Modelfile's folder, as in Ollama. A
    value that looks like a path (starting with `/`, `./`, `../` or `~`, or
    ending in `.gguf`) but names no file raises ModelfileError.
    """
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_dir():
        raise ModelfileError(
            f"FROM {source}: {path} is a folder; llmcloud creates models from one GGUF file, "
            "so convert safetensors folders with llama.cpp's convert_hf_to_gguf.py first"
        )
    if path.is_file():
        return path
    if source.startswith(_PATH_PREFIXES) or source.lower().endswith(".gguf"):
        raise ModelfileError(f"FROM {source}: file {path} not found; give the path of a .gguf file")
    return None


def _check_instruction(instruction: str, number: int) -> None:
    if instruction in SUPPORTED_INSTRUCTIONS:
        return
    if instruction in UNSUPPORTED_INSTRUCTIONS:
        reason = UNSUPPORTED_INSTRUCTIONS[instruction]
        raise ModelfileError(f"line {number}: {instruction} is not supported: {reason}")
    raise ModelfileError(
        f"line {number}: unknown instruction {instruction!r}; expected one of "
        + ", ".join(SUPPORTED_INSTRUCTIONS)
    )


def _read_value(rest: str, lines: list[str], index: int, label: str) -> tuple[str, int]:
    """Read the value that starts at `rest` on line `index`; return it and its last line index."""
    rest = rest.strip()
    number = index + 1
    if rest.startswith(_BLOCK_QUOTE):
        return _read_block(rest[len(_BLOCK_QUOTE) :], lines, index, label)
    if rest.startswith('"'):
        return _unquote(rest, number, label), index
    if not rest:
        raise ModelfileError(f"line {number}: {label} has no value")
    return rest, index


def _read_block(first: str, lines: list[str], index: int, label: str) -> tuple[str, int]:
    start = index + 1
    parts = [first]
    while True:
        head, closed, tail = parts[-1].partition(_BLOCK_QUOTE)
        if closed:
            if tail.strip():
                raise ModelfileError(
                    f"line {index + 1}: unexpected text {tail.strip()!r} after the closing "
                    f"{_BLOCK_QUOTE}"
                )
            parts[-1] = head
            return "\n".join(parts), index
        index += 1
        if index >= len(lines):
            raise ModelfileError(
                f"line {start}: {label} opens a {_BLOCK_QUOTE} block that is never closed"
            )
        parts.append(lines[index])


def _unquote(text: str, number: int, label: str) -> str:
    if len(text) < 2 or not text.endswith('"'):
        raise ModelfileError(
            f'line {number}: {label} value {text} has no closing quote; end it with "'
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        # Not a JSON string (an unknown escape such as \d): take the text between the quotes.
        value = text[1:-1].replace('\\"', '"')
    return str(value)


def _apply(found: dict[str, Any], instruction: str, value: str, number: int) -> None:
    if instruction == "FROM":
        if "from" in found:
            raise ModelfileError(f"line {number}: a second FROM; a Modelfile takes one FROM line")
        found["from"] = value
    elif instruction == "LICENSE":
        found["licenses"].append(value)
    else:
        found[instruction.lower()] = value


def parameter_value(name: str, text: str) -> int | float | bool | str:
    """Convert one parameter value from text to its option type, raising InvalidRequest."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise InvalidRequest(
            f"unknown parameter {name!r}; expected one of " + ", ".join(sorted(PARAMETER_TYPES))
        )
    if kind is list:
        return text
    try:
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        if kind is int:
            return int(text)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    except (KeyError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a finite number"}[kind]
        raise InvalidRequest(
            f"invalid value {text!r} for parameter {name}: expected {expected}"
        ) from None


def _add_parameter(parameters: dict[str, Any], name: str, text: str, number: int) -> None:
    try:
        value = parameter_value(name, text)
    except InvalidRequest as exc:
        raise ModelfileError(f"line {number}: {exc.message}") from None
    if PARAMETER_TYPES[name] is list:
        parameters.setdefault(name, []).append(value)
    else:
        parameters[name] = value
