"""Sizes, times, tables, progress and `show` text of the client commands."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from llmcloud.cli.display import (
    ProgressView,
    human_bytes,
    human_duration,
    human_time,
    parse_time,
    print_table,
)
from llmcloud.cli.model_info import render_show
from llmcloud.cli.models import processor_share

NOW = datetime(2025, 5, 10, 12, 0, 0, tzinfo=UTC)


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=80), buffer


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1_000, "1 KB"),
        (1_500, "1.5 KB"),
        (98_363_051, "98 MB"),
        (2_019_393_189, "2.0 GB"),
        (4_683_075_271, "4.7 GB"),
        (12_000_000_000_000, "12 TB"),
    ],
)
def test_human_bytes_uses_decimal_units(size: int, expected: str) -> None:
    assert human_bytes(size) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (42, "42 seconds"),
        (60, "About a minute"),
        (150, "2 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, expected: str) -> None:
    assert human_duration(seconds) == expected


def test_human_time_in_past_says_ago() -> None:
    assert human_time(NOW - timedelta(minutes=2, seconds=5), NOW) == "2 minutes ago"


def test_human_time_in_future_says_from_now() -> None:
    assert human_time(NOW + timedelta(minutes=4, seconds=30), NOW) == "4 minutes from now"


def test_human_time_far_future_is_forever() -> None:
    assert human_time(datetime(2318, 8, 29, tzinfo=UTC), NOW) == "Forever"


def test_human_time_missing_is_never() -> None:
    assert human_time(None, NOW) == "Never"


def test_parse_time_keeps_microseconds_of_nanoseconds() -> None:
    parsed = parse_time("2025-05-10T08:06:48.639712648-07:00")

    assert parsed == datetime(2025, 5, 10, 15, 6, 48, 639712, tzinfo=UTC)


def test_parse_time_reads_utc_suffix() -> None:
    assert parse_time("2025-05-10T12:00:00Z") == NOW


@pytest.mark.parametrize("value", [None, "", "yesterday", 17])
def test_parse_time_rejects_invalid_values(value: object) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize(
    ("size", "size_vram", "expected"),
    [
        (100, 0, "100% CPU"),
        (100, 100, "100% GPU"),
        (100, 52, "48%/52% CPU/GPU"),
        (100, 150, "Unknown"),
    ],
)
def test_processor_share(size: int, size_vram: int, expected: str) -> None:
    assert processor_share(size, size_vram) == expected


def test_print_table_writes_plain_columns_without_terminal() -> None:
    console, buffer = plain_console()

    print_table(console, ["NAME", "ID"], [["smollm2:135m", "556b4c160bfc"], ["a", "b"]])

    assert buffer.getvalue() == (
        "NAME            ID\nsmollm2:135m    556b4c160bfc\na               b\n"
    )


def test_progress_view_prints_each_status_once_without_terminal() -> None:
    console, buffer = plain_console()
    events = [
        {"status": "pulling manifest"},
        {"status": "pulling 0123456789ab", "digest": "sha256:0123", "total": 10, "completed": 0},
        {"status": "pulling 0123456789ab", "digest": "sha256:0123", "total": 10, "completed": 10},
        {"status": "pulling 0123456789ab", "digest": "sha256:0123", "total": 10, "completed": 10},
        {"status": "writing manifest"},
        {"status": "success"},
    ]

    with ProgressView(console) as view:
        for event in events:
            view.update(event)

    assert buffer.getvalue().splitlines() == [
        "pulling manifest",
        "pulling 0123456789ab: 100% 10 B",
        "writing manifest",
        "success",
    ]


def test_progress_view_draws_bars_on_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)

    with ProgressView(console) as view:
        view.update({"status": "pulling abc", "digest": "sha256:abc", "total": 4, "completed": 4})
        view.update({"status": "success"})

    assert "pulling abc" in buffer.getvalue()
    assert "100%" in buffer.getvalue()


SHOW_ANSWER = {
    "details": {"family": "llama", "parameter_size": "134.52M", "quantization_level": "Q4_1"},
    "model_info": {
        "general.architecture": "llama",
        "llama.context_length": 8192,
        "llama.embedding_length": 576,
    },
    "capabilities": ["completion"],
    "parameters": 'stop                           "<|im_end|>"\ntemperature                    0.2',
    "system": "Line one.\nLine two.\nLine three.",
    "license": "Apache-2.0",
}


def test_render_show_matches_ollama_layout() -> None:
    assert render_show(SHOW_ANSWER) == (
        "  Model\n"
        "    architecture        llama\n"
        "    parameters          134.52M\n"
        "    context length      8192\n"
        "    embedding length    576\n"
        "    quantization        Q4_1\n"
        "\n"
        "  Capabilities\n"
        "    completion\n"
        "\n"
        "  Parameters\n"
        '    stop           "<|im_end|>"\n'
        "    temperature    0.2\n"
        "\n"
        "  System\n"
        "    Line one.\n"
        "    Line two.\n"
        "    ...\n"
        "\n"
        "  License\n"
        "    Apache-2.0\n"
        "\n"
    )


def test_render_show_counts_parameters_without_size_label() -> None:
    answer = {"details": {}, "model_info": {"general.parameter_count": 8_030_261_248}}

    assert "    parameters      8.03B\n" in render_show(answer)


def test_render_show_tolerates_missing_fields() -> None:
    assert render_show({}) == "  Model\n    quantization\n\n"
