"""`llmcloud web`: start the chat web app."""

from __future__ import annotations

import typer

from llmcloud.cli.common import fail, settings_or_exit


def register(app: typer.Typer) -> None:
    app.command("web")(web)


def web(
    host: str | None = typer.Option(None, help="Address to listen on (setting web_host)."),
    port: int | None = typer.Option(
        None, min=1, max=65535, help="TCP port to listen on (setting web_port)."
    ),
) -> None:
    """Start the chat web app, which reaches the models through the gateway."""
    from llmcloud.web.server import StartupError, serve

    settings = settings_or_exit(web_host=host, web_port=port)
    try:
        serve(settings)
    except StartupError as exc:
        fail(str(exc), code=2)
