"""Parsing of durations and sizes as operators and Ollama clients write them."""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: str | int | float) -> float:
    """Parse a duration into seconds.

    Accepts a number of seconds (int, float or a numeric string) or a Go
    duration string such as "5m", "1h30m" or "-1s", which is what Ollama's
    `keep_alive` takes. Negative values are returned as they are; callers
    decide what they mean.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}; expected seconds or a string like '5m'")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}; expected a finite number of seconds")
        return float(value)

    text = value.strip()
    try:
        return parse_duration(float(text))
    except ValueError:
        pass

    sign = 1.0
    if text and text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if not text or _DURATION_PART.sub("", text) != "":
        raise ValueError(
            f"invalid duration {value!r}; expected seconds or a string like '30s', '5m' or '1h30m'"
        )
    total = sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    return sign * total
