"""`llmcloud auth`: the configured login providers and their redirect URIs."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from llmcloud.auth.providers import ProviderNotConfigured, configured_providers, redirect_uri
from llmcloud.cli.common import fail, settings_or_exit

app = typer.Typer(help="Log-in providers: GitHub and OpenID Connect.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="auth")


@app.command("providers")
def providers() -> None:
    """List the configured login providers with the redirect URI to register at each."""
    settings = settings_or_exit()
    configured = configured_providers(settings)
    if not configured:
        typer.echo(
            "No login provider is configured. Set auth_github_client_id and "
            "auth_github_client_secret, or add entries to auth_oidc_providers."
        )
        return
    try:
        uris = {provider.name: redirect_uri(settings, provider.name) for provider in configured}
    except ProviderNotConfigured as exc:
        fail(exc.message)

    table = Table("name", "kind", "button label", "scopes", "redirect URI")
    for provider in configured:
        table.add_row(
            provider.name,
            provider.kind,
            provider.label,
            " ".join(provider.scopes),
            uris[provider.name],
        )
    Console(width=200).print(table)
