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
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
                "text": {"format": TEXT_FORMAT},
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
