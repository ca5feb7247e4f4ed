from __future__ import annotations

import pytest

from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.names import parse_model_name


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest")),
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
        ("user/model:q4_K_M", ("registry.ollama.ai", "user", "model", "q4_K_M")),
        ("SmolLM2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
        ("127.0.0.1:5000/library/tiny:1", ("127.0.0.1:5000", "library", "tiny", "1")),
        ("hub.example.org/team/model", ("hub.example.org", "team", "model", "latest")),
    ],
)
def test_parse_model_name_splits_parts(text: str, parts: tuple[str, str, str, str]) -> None:
    assert parse_model_name(text).parts == parts


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("smollm2", "smollm2:latest"),
        ("user/model:v1", "user/model:v1"),
        ("127.0.0.1:5000/library/tiny:1", "127.0.0.1:5000/library/tiny:1"),
    ],
)
def test_model_name_display(text: str, display: str) -> None:
    assert parse_model_name(text).display == display


@pytest.mark.parametrize(
    "text",
    [
        "../x",
        "a/../b",
        "..",
        "a\\b",
        "/etc/passwd",
        "a//b",
        "a/b/c/d",
        "model:",
        "model:../x",
        "mo del",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "",
        "   ",
        ".hidden",
        "model:tag/x",
    ],
)
def test_parse_model_name_rejects_unsafe_names(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_model_name(text)


def test_parse_model_name_error_names_the_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_model_name("a/../b")

    assert "'a/../b'" in caught.value.message


def test_parse_model_name_rejects_non_string() -> None:
    with pytest.raises(InvalidRequest, match="model name is required"):
        parse_model_name(42)
