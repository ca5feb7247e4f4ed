"""Terminal output of the client commands: tables, sizes, times and progress bars.

On a terminal, tables and progress bars are drawn with rich. Anywhere else
(a pipe, a file, a test) the same information is written as plain text
lines without colour or cursor movement, so that scripts can read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

COLUMN_GAP = 4

# Durations in seconds for human_time.
_MINUTE = 60
_HOUR = 3600
_DAY = 24 * _HOUR


def human_bytes(size: int) -> str:
    """Format a byte count in decimal units as Ollama's format/bytes.go does: "1.2 GB", "135 MB"."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_duration(seconds: float) -> str:
    """Describe a non-negative duration as Ollama's format/time.go does: "2 minutes", "5 hours"."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < _MINUTE:
        return f"{whole} seconds"
    minutes = whole // _MINUTE
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / _HOUR)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{whole // _DAY // 365} years"


def human_time(moment: datetime | None, now: datetime | None = None, never: str = "Never") -> str:
    """Describe a time relative to now: "2 minutes ago", "4 minutes from now" or "Forever"."""
    if moment is None:
        return never
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    if delta < -20 * 365 * _DAY:
        return "Forever"
    if delta < 0:
        return f"{human_duration(-delta)} from now"
    return f"{human_duration(delta)} ago"


def parse_time(value: object) -> datetime | None:
    """Parse an RFC 3339 time from the engine, or return None when it is missing or invalid."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    # Ollama and this engine write nanoseconds, but datetime holds microseconds at most.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print left-aligned columns without borders, like `ollama list` and `ollama ps`."""
    if console.is_terminal:
        table = Table(box=None, pad_edge=False, padding=(0, COLUMN_GAP, 0, 0), header_style="bold")
        for header in headers:
            table.add_column(header, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return

    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    for line in [headers, *rows]:
        cells = [cell.ljust(width + COLUMN_GAP) for cell, width in zip(line, widths, strict=True)]
        console.out("".join(cells).rstrip(), highlight=False)


class ProgressView:
    """Progress display for the NDJSON objects of a pull, a create or a blob upload.

    An object with `total` gets a progress bar, keyed by its digest or, when
    it has none, by its status. Any other status gets a spinner line, which is
    marked done when the next status arrives.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self._progress: Progress | None = None
        self._bars: dict[str, TaskID] = {}
        self._finished_bars: set[str] = set()
        self._status: str | None = None
        self._status_task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        if self.interactive:
            bar_columns = (
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓[/]"),
                TextColumn("{task.description}"),
                *(_BarOnly(column) for column in bar_columns),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self._finish_status()
        if self._progress is not None:
            self._progress.stop()

    def update(self, event: dict[str, Any]) -> None:
        status = str(event.get("status") or "")
        total = event.get("total")
        if isinstance(total, int) and total > 0:
            completed = event.get("completed")
            self._update_bar(event, status, total, completed if isinstance(completed, int) else 0)
        elif status and status != self._status:
            self._show_status(status)

    def _update_bar(self, event: dict[str, Any], status: str, total: int, completed: int) -> None:
        key = str(event.get("digest") or status)
        label = status or _short_digest(key)
        self._finish_status()
        if self._progress is not None:
            task = self._bars.get(key)
            if task is None:
                task = self._progress.add_task(label, total=total, bar=True)
                self._bars[key] = task
            self._progress.update(task, total=total, completed=completed)
            return
        if completed >= total and key not in self._finished_bars:
            self._finished_bars.add(key)
            self.console.out(f"{label}: 100% {human_bytes(total)}", highlight=False)

    def _show_status(self, status: str) -> None:
        self._finish_status()
        self._status = status
        if self._progress is not None:
            self._status_task = self._progress.add_task(status, total=None, bar=False)
        else:
            self.console.out(status, highlight=False)

    def _finish_status(self) -> None:
        if self._progress is not None and self._status_task is not None:
            self._progress.update(self._status_task, total=1, completed=1)
            self._status_task = None


class _BarOnly(ProgressColumn):
    """Renders a column for progress bars and leaves it empty on status lines."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> RenderableType:
        return self.column.render(task) if task.fields.get("bar") else Text("")


def _short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
