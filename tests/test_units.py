from __future__ import annotations

import pytest

from llmcloud.units import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("-1", -1.0),
        ("-1s", -1.0),
        ("0", 0.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (30, 30.0),
        (-1, -1.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "5 minutes", "m", "", "1d", "nan", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
