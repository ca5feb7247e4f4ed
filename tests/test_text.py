"""Checks on text from clients: control characters and NUL."""

from __future__ import annotations

import pytest

from llmcloud.text import control_character, describe_control_character, describe_nul


@pytest.mark.parametrize(
    ("text", "allowed", "expected"),
    [
        ("plain text", "", None),
        ("tab\there", "", 3),
        ("tab\there", "\t\n", None),
        ("nul\x00", "", 3),
        ("del\x7f", "", 3),
        ("c1\x9b", "", 2),
        ("zero\u200bwidth joiner\u200d", "", None),
        ("right-to-left \u202e", "", None),
    ],
)
def test_control_character_finds_category_cc(text: str, allowed: str, expected: int | None) -> None:
    assert control_character(text, allowed) == expected


def test_describe_control_character_names_code_point() -> None:
    message = describe_control_character("a\x1bb", "title")
    assert message == (
        "title contains the control character U+001B at character 1; "
        "remove it or use printable text"
    )


def test_describe_control_character_accepts_clean_text() -> None:
    assert describe_control_character("clean", "title") is None


def test_describe_nul_names_position() -> None:
    message = describe_nul("ab\x00", "message")
    assert message is not None
    assert message.startswith("message contains a NUL character (U+0000) at character 2")


def test_describe_nul_ignores_other_controls() -> None:
    assert describe_nul("bell\x07", "message") is None
