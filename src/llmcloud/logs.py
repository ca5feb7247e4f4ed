"""One logging setup for every llmcloud process.

Loggers have fixed names: `llmcloud.engine`, `llmcloud.access`,
`llmcloud.audit`, `llmcloud.cli` and so on. uvicorn's own loggers go through
the same handler; its access log is off because `llmcloud.access` replaces it.
Values are passed lazily (`%s`), and no caller logs a secret or a prompt.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Escapes for the C0 and C1 control characters except tab, DEL and the Unicode
# line separators. A message may carry text from a request (a URL path decodes
# %0a to a newline), and a raw newline there would let a client write a line
# that reads like a record of its own.
_CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)] if code != 0x09
} | {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


# A double quote or a space in a decoded URL path (%22, %20) would let the path end the quoted
# request of an access log line early and show a forged status after it.
_QUOTE_OR_SPACE = re.compile(r'[" ]')


def access_log_path(path: str) -> str:
    """Return a decoded URL path with its double quotes and spaces percent-encoded again."""
    if '"' not in path and " " not in path:
        return path
    return _QUOTE_OR_SPACE.sub(lambda match: "%22" if match.group() == '"' else "%20", path)


def escape_control_characters(text: str) -> str:
    """Replace control characters and line separators with escapes such as `\\n`."""
    return text.translate(_CONTROL_ESCAPES)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record.

    A handler that kept the stream it was created with would write into a
    closed file once that stream is replaced, as test runners and Typer's
    CliRunner do while threads of a server are still logging.
    """

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` lines in which an llmcloud message stays on one line.

    A traceback still follows on its own lines. Messages of other loggers are
    left as they are, because uvicorn passes whole tracebacks as the message.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.name == "llmcloud" or record.name.startswith("llmcloud."):
            record.message = escape_control_characters(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    formatter = "json" if fmt == "json" else "text"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "text": {"()": TextFormatter, "fmt": TEXT_FORMAT},
                "json": {"()": JsonFormatter},
            },
            "handlers": {"stderr": {"()": StderrHandler, "formatter": formatter}},
            "loggers": {
                "llmcloud": {"handlers": ["stderr"], "level": level, "propagate": False},
                "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
                "uvicorn.error": {"level": level},
                "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            },
        }
    )
