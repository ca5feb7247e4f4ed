"""Line charts of recent samples as inline SVG, so the status page needs no script."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 600
HEIGHT = 120


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    points: str
    """SVG polyline points; empty when there is no value yet."""
    latest: str
    maximum: str


def line_chart(
    title: str, unit: str, times: Sequence[float], values: Sequence[float | None]
) -> Chart:
    """Scale (time, value) pairs into the chart's box; gaps (None, NaN) are left out."""
    pairs = [
        (moment, value)
        for moment, value in zip(times, values, strict=True)
        if value is not None and math.isfinite(value)
    ]
    if not pairs:
        return Chart(title, unit, "", "no data", "")
    start, end = times[0], max(times[-1], times[0] + 1)
    top = max(value for _, value in pairs) or 1.0
    points = " ".join(
        f"{(moment - start) / (end - start) * WIDTH:.1f},{HEIGHT - value / top * HEIGHT:.1f}"
        for moment, value in pairs
    )
    return Chart(title, unit, points, _number(pairs[-1][1]), _number(top))


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"
