"""`llmcloud nginx-config`: print an nginx configuration for llmcloud behind nginx."""

from __future__ import annotations

from pathlib import Path

import typer

from llmcloud.cli.common import fail, settings_or_exit


def register(app: typer.Typer) -> None:
    app.command("nginx-config")(nginx_config)


def nginx_config(
    server_name: list[str] = typer.Option(
        [],
        "--server-name",
        help="Host name nginx serves; repeat for more. Default: tls_acme_domains.",
    ),
    upstream: list[str] = typer.Option(
        [],
        "--upstream",
        help="HOST:PORT of a web instance; repeat for more. Default: web_host:web_port.",
    ),
    cert: Path | None = typer.Option(
        None, help="Certificate chain file. Default: the ACME-managed one."
    ),
    key: Path | None = typer.Option(None, help="Private key file of --cert."),
    https_listen: str = typer.Option("443", help="nginx `listen` value for HTTPS."),
    http_listen: str = typer.Option(
        "80", help="nginx `listen` value for the redirect; empty for none."
    ),
) -> None:
    """Print an nginx server configuration: TLS, redirect, upstream, WebSocket, streaming."""
    from llmcloud.tls.errors import TLSError
    from llmcloud.tls.nginx import NginxOptions, render_nginx_config
    from llmcloud.tls.serving import acme_files
    from llmcloud.web.app import max_body_bytes

    settings = settings_or_exit()
    names = server_name or settings.tls_acme_domains
    if (cert is None) != (key is None):
        fail("give both --cert and --key, or neither to use the ACME-managed certificate", code=2)
    if cert is None or key is None:
        if not settings.tls_acme_domains:
            fail("give --cert and --key, or set tls_acme_domains for an ACME certificate", code=2)
        files = acme_files(settings.data_dir, settings.tls_acme_domains)
        cert, key = files.cert, files.key
    options = NginxOptions(
        server_names=names,
        upstreams=upstream or [f"{settings.web_host}:{settings.web_port}"],
        cert_file=cert.absolute(),
        key_file=key.absolute(),
        max_body_bytes=max_body_bytes(settings),
        https_listen=https_listen,
        http_listen=http_listen or None,
    )
    try:
        typer.echo(render_nginx_config(options), nl=False)
    except TLSError as exc:
        fail(exc.message, code=2)
