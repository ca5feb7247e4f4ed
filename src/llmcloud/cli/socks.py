"""`llmcloud socks`: run the SOCKS5 proxy for admins, and print the SSH tunnel config."""

from __future__ import annotations

import errno

import typer

from llmcloud.cli.common import fail, settings_or_exit

app = typer.Typer(
    help="SOCKS5 proxy through which admins reach internal pages from their browser.",
    invoke_without_command=True,
)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="socks")


@app.callback()
def _default(context: typer.Context) -> None:
    """Without a subcommand, run the proxy (the same as `llmcloud socks serve`)."""
    if context.invoked_subcommand is None:
        serve(host=None, port=None)


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, help="Address to listen on (setting socks_host)."),
    port: int | None = typer.Option(
        None, min=1, max=65535, help="TCP port to listen on (setting socks_port)."
    ),
) -> None:
    """Run the SOCKS5 proxy until Ctrl-C or SIGTERM."""
    from llmcloud.socks.service import serve as serve_proxy

    settings = settings_or_exit(socks_host=host, socks_port=port)
    try:
        serve_proxy(settings)
    except OSError as exc:
        address = f"{settings.socks_host}:{settings.socks_port}"
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"port {settings.socks_port} on {settings.socks_host} is already in use; stop "
                "the other program or pick another port with --port (setting socks_port)",
                code=2,
            )
        fail(f"cannot listen on {address}: {exc.strerror or exc}", code=2)


@app.command("ssh-config")
def ssh_config(
    host: str = typer.Option(..., help="SSH jump host that can reach the internal network."),
    user: str = typer.Option(..., help="Your user name on the jump host."),
    local_port: int = typer.Option(1080, help="Local port of the SOCKS tunnel."),
    identity_file: str = typer.Option(
        "~/.ssh/id_ed25519", help="Private key that logs you in to the jump host."
    ),
) -> None:
    """Print the ~/.ssh/config block for a SOCKS tunnel (DynamicForward) through a jump host."""
    from llmcloud.socks.ssh_config import InvalidSshValue, render_ssh_config

    try:
        block = render_ssh_config(host, user, local_port=local_port, identity_file=identity_file)
    except InvalidSshValue as exc:
        fail(str(exc), code=2)
    typer.echo(block, nl=False)
    typer.secho("Keep the SSH session open while the browser uses the proxy.", err=True, bold=True)
