from __future__ import annotations

import io
import json
import logging

import pytest

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
