"""`llmcloud engine`: start the model engine's HTTP server."""

from __future__ import annotations

import typer

from llmcloud.cli.common import fail, settings_or_exit


def register(app: typer.Typer) -> None:
    app.command("engine")(engine)


def engine(
    host: str | None = typer.Option(None, help="Address to listen on (setting engine_host)."),
    port: int | None = typer.Option(
        None, min=1, max=65535, help="TCP port to listen on (setting engine_port)."
    ),
) -> None:
    """Start the model engine: Ollama's API under /api and OpenAI's under /v1."""
    from llmcloud.engine.server import StartupError, serve

    settings = settings_or_exit(engine_host=host, engine_port=port)
    try:
        serve(settings)
    except StartupError as exc:
        fail(str(exc), code=2)
