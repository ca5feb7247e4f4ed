"""Client commands that talk to a running engine over HTTP, as Ollama's CLI does."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client commands (run, list, ps, pull, show, rm, cp, create) to the app."""
