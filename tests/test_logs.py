from __future__ import annotations

import io
import json
import logging

import pytest

from llmcloud import logs
from llmcloud.logs import configure_logging


def test_log_follows_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("INFO")
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)

    logging.getLogger("llmcloud.test").info("model %s loaded", "smollm2:135m")

    assert "llmcloud.test: model smollm2:135m loaded" in second.getvalue()


def test_json_format_writes_one_object(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("INFO", "json")
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)

    logging.getLogger("llmcloud.test").warning("disk at %d%%", 93)

    entry = json.loads(stream.getvalue())
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "llmcloud.test"
    assert entry["message"] == "disk at 93%"


def test_text_format_escapes_newlines(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("INFO")
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    path = "/chats/x\n2026-12-04 19:59:00,000 WARNING llmcloud.audit: forged\r\x00\u2028"

    logging.getLogger("llmcloud.access").info('"GET %s" 404', path)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        '"GET /chats/x\\n2026-12-04 19:59:00,000 WARNING llmcloud.audit: forged\\r\\x00\\u2028" 404'
    )


def test_text_format_keeps_tabs_and_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("INFO")
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)

    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("llmcloud.test").exception("failed:\tcolumn %s", "ünïcode")

    output = stream.getvalue()
    assert "llmcloud.test: failed:\tcolumn ünïcode\n" in output
    assert "Traceback (most recent call last):\n" in output
    assert output.rstrip().endswith("ValueError: bad value")


def test_text_format_keeps_uvicorn_traceback_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("INFO")
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)

    logging.getLogger("uvicorn.error").error("Traceback (most recent call last):\n  File x")

    assert stream.getvalue().endswith("Traceback (most recent call last):\n  File x\n")


def test_access_log_path_encodes_quotes_and_spaces() -> None:
    assert logs.access_log_path('/x" 404 0.1ms y') == "/x%22%20404%200.1ms%20y"
    assert logs.access_log_path("/chats/7") == "/chats/7"
