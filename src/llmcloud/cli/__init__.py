"""The `llmcloud` command: thin Typer commands over the llmcloud packages."""

from __future__ import annotations

import typer

from llmcloud import __version__
from llmcloud.cli import (
    auth,
    backup,
    certs,
    check,
    config,
    engine,
    models,
    nginx,
    socks,
    systemd,
    up,
    users,
    web,
)

app = typer.Typer(
    name="llmcloud",
    help="Run a self-hosted LLM chat service and keep it running.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(config.app, name="config")
engine.register(app)
models.register(app)
web.register(app)
up.register(app)
check.register(app)
certs.register(app)
nginx.register(app)
systemd.register(app)
socks.register(app)
auth.register(app)
users.register(app)
backup.register(app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmcloud {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Run a self-hosted LLM chat service and keep it running."""


def main() -> None:
    app()
