"""Checks that text from clients is valid Unicode, and JSON type names for error messages.

A JSON escape such as \\ud800 decodes to a lone surrogate, which UTF-8 cannot
encode. The backends, the databases and every response use UTF-8, so such
text is rejected where it comes in, naming where it is. PostgreSQL rejects
NUL (U+0000) in text columns, and control characters have no place in a
title, so those are rejected too where text is stored.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def lone_surrogate(text: str) -> int | None:
    """Return the index of the first lone surrogate in `text`, or None when there is none."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def describe_surrogate(text: str, where: str) -> str | None:
    """Return an error message for a lone surrogate in `text`, named by `where`, or None."""
    index = lone_surrogate(text)
    if index is None:
        return None
    return (
        f"{where} has a lone surrogate (U+{ord(text[index]):04X}) at character {index}, "
        "which is not valid Unicode text; send the character's full surrogate pair or remove it"
    )


def may_have_surrogate(raw: str | bytes | bytearray) -> bool:
    """Return whether raw JSON text has an escape that could decode to a lone surrogate."""
    if isinstance(raw, str):
        return "\\ud" in raw or "\\uD" in raw
    return b"\\ud" in raw or b"\\uD" in raw


def surrogate_problem(value: Any) -> tuple[str, str] | None:
    """Return the path and error message of the first string with a lone surrogate, or None.

    `value` is parsed JSON; a path reads like `messages.0.content`.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = describe_surrogate(item, path or "the value")
            if problem is not None:
                return path, problem
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                where = f"{path}.{key}" if path else str(key)
                # The key is escaped in the message, which must itself be valid UTF-8.
                escaped_where = where.encode("utf-8", "backslashreplace").decode("utf-8")
                problem = describe_surrogate(key, f"the name of {escaped_where}")
                if problem is not None:
                    return path, problem
                stack.append((child, where))
        elif isinstance(item, list):
            stack.extend(
                (child, f"{path}.{index}") for index, child in reversed(list(enumerate(item)))
            )
    return None


def control_character(text: str, allowed: str = "") -> int | None:
    """Return the index of the first control character (category Cc) not in `allowed`, or None."""
    for index, char in enumerate(text):
        if char not in allowed and unicodedata.category(char) == "Cc":
            return index
    return None


def describe_control_character(text: str, where: str, allowed: str = "") -> str | None:
    """Return an error message for a control character in `text`, named by `where`, or None."""
    index = control_character(text, allowed)
    if index is None:
        return None
    return (
        f"{where} contains the control character U+{ord(text[index]):04X} at character "
        f"{index}; remove it or use printable text"
    )


def describe_nul(text: str, where: str) -> str | None:
    """Return an error message for a NUL character in `text`, named by `where`, or None."""
    index = text.find("\x00")
    if index < 0:
        return None
    return (
        f"{where} contains a NUL character (U+0000) at character {index}, which the "
        "database cannot store; remove it"
    )


def number_too_long(where: str) -> str:
    """Return the error message for a JSON integer longer than Python reads (a ValueError)."""
    limit = sys.get_int_max_str_digits()
    return f"{where} has a number of more than {limit} digits; send a shorter number"


def json_type_name(value: object) -> str:
    """Return the JSON name of a parsed JSON value's type: object, array, string and so on."""
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)
