"""The text of `llmcloud show`: sections of a model's /api/show response, as `ollama show` prints.

Each section is a title indented by two spaces and rows indented by four,
with columns padded to the widest cell plus four spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The /api/show fields that `llmcloud show --<field>` prints alone, in the order of the flags.
SHOW_FIELDS = ("modelfile", "template", "system", "parameters", "license")
# Lines of the system message and license shown before "...".
PREVIEW_LINES = 2

_GAP = "    "


def render_show(info: dict[str, Any]) -> str:
    """Render the Model, Capabilities, Parameters, System and License sections."""
    sections = [_section("Model", _model_rows(info))]
    capabilities = info.get("capabilities")
    if isinstance(capabilities, list) and capabilities:
        sections.append(_section("Capabilities", [[str(item)] for item in capabilities]))
    parameters = _parameter_rows(str(info.get("parameters") or ""))
    if parameters:
        sections.append(_section("Parameters", parameters))
    for title, key in (("System", "system"), ("License", "license")):
        text = info.get(key)
        if isinstance(text, str) and text.strip():
            sections.append(_section(title, [[line] for line in _preview(text)]))
    return "".join(sections)


def _model_rows(info: dict[str, Any]) -> list[list[str]]:
    details = _mapping(info.get("details"))
    model_info = _mapping(info.get("model_info"))
    architecture = str(model_info.get("general.architecture") or details.get("family") or "")
    rows = [["architecture", architecture]] if architecture else []

    parameters = details.get("parameter_size") or _parameter_count(
        model_info.get("general.parameter_count")
    )
    if parameters:
        rows.append(["parameters", str(parameters)])
    for label, key in (
        ("context length", "context_length"),
        ("embedding length", "embedding_length"),
    ):
        value = model_info.get(f"{architecture}.{key}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            rows.append([label, f"{value:g}"])
    rows.append(["quantization", str(details.get("quantization_level") or "")])
    return rows


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parameter_count(value: object) -> str:
    """Format a parameter count as Ollama does: 134.52M, 8.03B."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return ""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(int(value))


def _parameter_rows(text: str) -> list[list[str]]:
    """Split /api/show's `parameters` text ("name   value" per line) into rows."""
    rows = []
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name:
            rows.append([name, value.strip()])
    return rows


def _preview(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > PREVIEW_LINES:
        return [*lines[:PREVIEW_LINES], "..."]
    return lines


def _section(title: str, rows: Sequence[Sequence[str]]) -> str:
    widths: list[int] = []
    for row in rows:
        for index, cell in enumerate(row):
            if index == len(widths):
                widths.append(0)
            widths[index] = max(widths[index], len(cell))
    lines = [f"  {title}"]
    for row in rows:
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row)]
        lines.append((_GAP + _GAP.join(cells)).rstrip())
    return "\n".join(lines) + "\n\n"
