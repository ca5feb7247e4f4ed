"""`llmcloud check`: probe a running deployment as a monitoring system would."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmcloud.cli.common import settings_or_exit
from llmcloud.monitoring.probes import ProbeResult, Status, default_verify, run_probes, worst

STYLES = {Status.OK: "green", Status.WARNING: "yellow", Status.CRITICAL: "red"}


def register(app: typer.Typer) -> None:
    app.command("check")(check)


def check(
    url: str | None = typer.Option(
        None,
        help="URL of the web app; default public_url, else web_host:web_port over https when "
        "the server speaks TLS there, or http.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ca_bundle: Path | None = typer.Option(
        None,
        help="PEM file of CAs to verify the web app's certificate; default the system's CAs, "
        "or the internal CA when no --url, public_url or own certificate is set.",
    ),
    insecure: bool = typer.Option(
        False, help="Skip TLS verification of the web app (the certificate's days are still read)."
    ),
) -> None:
    """Probe the deployment; exit status 0 ok, 1 warning, 2 critical."""
    settings = settings_or_exit()
    verify: bool | str = True
    if ca_bundle:
        verify = str(ca_bundle)
    elif insecure:
        verify = False
    elif url is None:
        verify = default_verify(settings)
    results = run_probes(settings, url, verify=verify)
    if as_json:
        typer.echo(json.dumps(to_json(results), indent=2))
    else:
        print_table(results)
    raise typer.Exit(int(worst(results)))


def to_json(results: list[ProbeResult]) -> dict[str, object]:
    return {
        "status": worst(results).name.lower(),
        "checks": [
            {"name": result.name, "status": result.status.name.lower(), "detail": result.detail}
            for result in results
        ],
    }


def print_table(results: list[ProbeResult]) -> None:
    table = Table("Check", "Status", "Detail")
    for result in results:
        style = STYLES[result.status]
        table.add_row(result.name, f"[{style}]{result.status.name.lower()}[/]", result.detail)
    Console().print(table)
