"""`llmcloud certs`: the internal CA, server certificates, ACME, and the list in use."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from llmcloud.cli.common import fail, settings_or_exit
from llmcloud.cli.display import print_table
from llmcloud.tls.errors import TLSError

app = typer.Typer(help="Create and list TLS certificates.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="certs")


@app.command("init-ca")
def init_ca(
    replace: bool = typer.Option(
        False, help="Replace an existing CA; its certificates stop being trusted."
    ),
) -> None:
    """Create the internal CA in the data dir (key mode 0600)."""
    from llmcloud.tls.ca import init_ca as create_ca

    settings = settings_or_exit()
    try:
        path = create_ca(settings.data_dir, settings.tls_ca_lifetime_days, replace=replace)
    except TLSError as exc:
        fail(exc.message, code=2)
    typer.echo(f"Created the internal CA {path}")
    typer.echo("Import it into browsers and clients to trust certificates it issues.")


@app.command("issue")
def issue(
    name: str = typer.Argument(..., help="File name of the certificate, such as `web`."),
    san: list[str] = typer.Option(..., "--san", help="Host name or IP address; repeat for more."),
    days: int | None = typer.Option(
        None, help="Lifetime in days (setting tls_cert_lifetime_days)."
    ),
) -> None:
    """Issue an ECDSA P-256 server certificate from the internal CA."""
    from llmcloud.tls.ca import issue_certificate

    settings = settings_or_exit()
    try:
        pair = issue_certificate(
            settings.data_dir, name, san, days or settings.tls_cert_lifetime_days
        )
    except TLSError as exc:
        fail(exc.message, code=2)
    typer.echo(f"Certificate: {pair.cert_path}")
    typer.echo(f"Key:         {pair.key_path}")


@app.command("export-ca")
def export_ca(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="File to write; default stdout."
    ),
) -> None:
    """Print the internal CA certificate (PEM) for browsers and clients to trust."""
    from llmcloud.tls.ca import CAPaths

    settings = settings_or_exit()
    path = CAPaths(settings.data_dir).cert
    if not path.exists():
        fail(f"no internal CA at {path}; create one with `llmcloud certs init-ca`", code=2)
    pem = path.read_bytes()
    if output is None:
        typer.echo(pem.decode("ascii"), nl=False)
        return
    try:
        output.write_bytes(pem)
    except OSError as exc:
        fail(f"cannot write the CA certificate to {output}: {exc.strerror}; pick a writable path")


@app.command("acme")
def acme() -> None:
    """Obtain the ACME certificate for tls_acme_domains now.

    The web app (or nginx in front of it) must answer /.well-known/acme-challenge/
    on port 80 of every domain, from the same data dir.
    """
    from llmcloud.tls.acme_client import AcmeClient, AcmeConfig
    from llmcloud.tls.serving import acme_files

    settings = settings_or_exit()
    if not settings.tls_acme_domains:
        fail("tls_acme_domains is empty; set the domain names to get a certificate for", code=2)
    config = AcmeConfig(
        settings.tls_acme_directory,
        settings.data_dir,
        settings.tls_acme_email,
        settings.tls_acme_ca_bundle,
    )
    files = acme_files(settings.data_dir, settings.tls_acme_domains)
    try:
        AcmeClient(config).issue(settings.tls_acme_domains, files.cert, files.key)
    except TLSError as exc:
        fail(exc.message)
    typer.echo(f"Certificate: {files.cert}")
    typer.echo(f"Key:         {files.key}")


@app.command("list")
def list_certificates() -> None:
    """List every certificate in use: subject, SANs, issuer, not-after, days left, where served."""
    from llmcloud.tls.inventory import certificate_inventory

    settings = settings_or_exit()
    rows = []
    for entry in certificate_inventory(settings):
        if entry.info is None:
            rows.append([str(entry.path), "", "", "", "", "", entry.served_at, entry.error or ""])
            continue
        info = entry.info
        rows.append(
            [
                str(entry.path),
                info.subject,
                ",".join(info.sans),
                info.issuer,
                f"{info.not_after:%Y-%m-%d %H:%M}",
                f"{info.days_left():.0f}",
                entry.served_at,
                "",
            ]
        )
    headers = ["FILE", "SUBJECT", "SANS", "ISSUER", "NOT AFTER (UTC)", "DAYS LEFT", "SERVED AT"]
    print_table(Console(), [*headers, "ERROR"], rows)
