"""`llmcloud systemd-units`: write systemd service units for each part."""

from __future__ import annotations

from pathlib import Path

import typer

from llmcloud.cli.common import fail
from llmcloud.deploy.systemd import (
    DEFAULT_DATA_DIR,
    DEFAULT_ENV_FILE,
    DEFAULT_EXECUTABLE,
    DEFAULT_USER,
    UnitOptionError,
    UnitOptions,
    write_units,
)


def register(app: typer.Typer) -> None:
    app.command("systemd-units")(systemd_units)


def systemd_units(
    output_dir: Path = typer.Option(
        Path("."), "--output-dir", "-o", help="Folder to write the .service files into."
    ),
    user: str = typer.Option(DEFAULT_USER, help="System user that the services run as."),
    executable: Path = typer.Option(
        DEFAULT_EXECUTABLE, help="Absolute path of the llmcloud command on the server."
    ),
    env_file: Path = typer.Option(
        DEFAULT_ENV_FILE, help="Absolute path of the file of LLMCLOUD_* settings."
    ),
    data_dir: Path = typer.Option(
        DEFAULT_DATA_DIR, help="Absolute path of the data dir, the only writable folder."
    ),
) -> None:
    """Write systemd units for the engine, web app, SOCKS proxy and `up`."""
    try:
        options = UnitOptions(
            user=user, executable=executable, env_file=env_file, data_dir=data_dir
        )
    except UnitOptionError as exc:
        fail(str(exc), code=2)
    try:
        paths = write_units(options, output_dir)
    except OSError as exc:
        fail(f"cannot write the units to {output_dir}: {exc.strerror or exc}", code=1)
    for path in paths:
        typer.echo(f"wrote {path}")
    typer.echo(
        f"Copy them to /etc/systemd/system/, create the user {user!r}, then run "
        "`systemctl daemon-reload` and `systemctl enable --now llmcloud-web` (or another part)."
    )
