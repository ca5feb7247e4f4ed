"""`llmcloud backup ...`: take, list, show, verify, restore and prune backups."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from llmcloud.cli.common import fail, settings_or_exit
from llmcloud.db.errors import ServiceError
from llmcloud.settings import Settings

if TYPE_CHECKING:
    from llmcloud.backup.restore import RestoreResult

app = typer.Typer(help="Take, verify and restore encrypted backups.", no_args_is_help=True)
KEY_OPTION = typer.Option(
    None, "--key", help="age identity file to decrypt with (default: backup_identity_file)."
)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="backup")


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int], None]]:
    """Show a byte counter with speed on stderr while the block runs."""
    console = Console(stderr=True)
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda size: bar.advance(task, size)


@contextmanager
def _errors_as_exit() -> Iterator[None]:
    try:
        yield
    except ServiceError as exc:
        fail(exc.message)


def _key_created(path: Path) -> None:
    typer.secho(
        f"A new backup key was written to {path}. Copy it somewhere off this machine now "
        "(`llmcloud backup export-key > FILE`): backups cannot be restored without it.",
        err=True,
        fg=typer.colors.YELLOW,
    )


@app.command("run")
def run() -> None:
    """Take a backup now, publish it to every target, then prune old ones."""
    from llmcloud.backup.deployment_lock import wait_for_deployment_lock
    from llmcloud.backup.operations import backup_and_prune

    settings = settings_or_exit()
    with (
        _errors_as_exit(),
        wait_for_deployment_lock(settings, "backup", "the backup"),
        _progress("Backing up") as progress,
    ):
        result = backup_and_prune(settings, progress=progress, on_key_created=_key_created)
    for warning in result.warnings:
        typer.secho(f"Warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(
        f"backup {result.backup_id}: {result.archive_size} bytes in "
        f"{result.duration_seconds:.1f} s, stored in {', '.join(result.targets)}"
    )


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the backups on every target, oldest first."""
    from llmcloud.backup.operations import list_backups

    settings = settings_or_exit()
    with _errors_as_exit():
        backups = list_backups(settings)
    if as_json:
        typer.echo(json.dumps([asdict(backup) for backup in backups], indent=2))
        return
    table = Table("ID", "CREATED", "TARGETS", box=None)
    for backup in backups:
        table.add_row(backup.backup_id, backup.created_at, ", ".join(backup.targets))
    Console().print(table)


@app.command("show")
def show(backup_id: str, key: Path | None = KEY_OPTION) -> None:
    """Print the decrypted manifest of a backup."""
    from llmcloud.backup.operations import show_backup

    settings = settings_or_exit()
    with _errors_as_exit():
        manifest = show_backup(settings, backup_id, key)
    typer.echo(manifest.to_json().decode())


@app.command("verify")
def verify(backup_id: str | None = typer.Argument(None), key: Path | None = KEY_OPTION) -> None:
    """Restore a backup (default: the newest) into scratch space and check all of it."""
    from llmcloud.backup.deployment_lock import wait_for_deployment_lock
    from llmcloud.backup.operations import verify as verify_backup

    settings = settings_or_exit()
    with (
        _errors_as_exit(),
        wait_for_deployment_lock(settings, "verify", "the restore test"),
        _progress("Verifying") as progress,
    ):
        result = verify_backup(settings, backup_id, key_file=key, progress=progress)
    rows = sum(result.row_counts.values())
    blobs = f"{result.blobs} model blobs"
    if result.blobs_present_only:
        blobs += (
            f" ({result.blobs_present_only} of them only checked to be there, because verify "
            f"checked them within the last {settings.backup_verify_blob_days} days)"
        )
    typer.echo(
        f"backup {result.backup_id} on {result.target} verified: {result.files} files, "
        f"{result.size} bytes, {rows} rows in {len(result.row_counts)} tables, {blobs}"
    )


@app.command("restore")
def restore(
    backup_id: str,
    to: Path | None = typer.Option(None, "--to", help="Data dir to restore into."),
    force: bool = typer.Option(False, help="Replace a data dir in use, after a backup of it."),
    key: Path | None = KEY_OPTION,
) -> None:
    """Restore a backup into a new or empty data dir."""
    from llmcloud.backup.deployment_lock import wait_for_deployment_lock
    from llmcloud.backup.operations import identities_for
    from llmcloud.backup.restore import restore_backup
    from llmcloud.backup.targets import targets_from_settings

    settings = settings_or_exit()
    # Under the backup lock, so that no instance backs up the database while it is replaced.
    with (
        _errors_as_exit(),
        wait_for_deployment_lock(settings, "backup", "the restore"),
        _progress("Restoring") as progress,
    ):
        identities = identities_for(settings, key)
        result = restore_backup(
            settings,
            targets_from_settings(settings),
            identities,
            backup_id,
            data_dir=to,
            force=force,
            progress=progress,
        )
    if result.safety_backup_id:
        typer.echo(f"the data dir was backed up first as {result.safety_backup_id}")
    typer.echo(f"backup {result.backup_id} restored into {result.data_dir}")
    if result.blobs:
        typer.echo(f"{result.blobs} model blobs restored into the model store")
    message = restored_config_message(result)
    if message is not None:
        typer.echo(message)


def restored_config_message(result: RestoreResult) -> str | None:
    """Say where the restored settings file is and what the operator does with it."""
    if result.config_file is None:
        return None
    if result.config_in_place:
        return (
            f"its settings file is back at {result.config_file}; start llmcloud with "
            f"LLMCLOUD_CONFIG={result.config_file} if that variable pointed elsewhere"
        )
    original = result.original_config_file or "your config file path"
    return (
        f"its settings file, which was at {original} (outside the data dir), was written to "
        f"{result.config_file}; compare it with {original} and move it there, or set "
        f"LLMCLOUD_CONFIG={result.config_file}, before starting llmcloud"
    )


@app.command("prune")
def prune() -> None:
    """Delete the backups that the retention settings do not keep."""
    from llmcloud.backup.deployment_lock import wait_for_deployment_lock
    from llmcloud.backup.operations import prune as prune_backups

    settings = settings_or_exit()
    with _errors_as_exit(), wait_for_deployment_lock(settings, "backup", "the prune"):
        deleted = prune_backups(settings)
    typer.echo(f"{len(deleted)} backups deleted" + (f": {', '.join(deleted)}" if deleted else ""))


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print the last backup, the last verified restore and the failure counts."""
    from llmcloud.backup.status import read_status

    settings = settings_or_exit()
    document = read_status(settings.data_dir).to_dict()
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    for name, value in document.items():
        typer.echo(f"{name.replace('_', ' ')}: {_status_value(name, value)}")


def _status_value(name: str, value: object) -> object:
    """Return the text for one status field: an unset time is "never", other unset fields "none"."""
    if value is not None:
        return value
    return "never" if name.endswith("_at") else "none"


@app.command("export-key")
def export_key() -> None:
    """Print the backup key (age identity), to keep a copy off this machine."""
    from llmcloud.backup.keys import identity_path

    settings = settings_or_exit()
    if settings.backup_passphrase is not None:
        fail(
            "backups are encrypted with backup_passphrase, so there is no key file to export; "
            "keep a copy of the passphrase off this machine instead (each backup carries its "
            "key, encrypted with it, as key.age)"
        )
    path = identity_path(settings)
    if not path.is_file():
        fail(f"no backup key at {path} yet; `llmcloud backup run` creates it")
    typer.echo(path.read_text(), nl=False)


@app.command("start-fresh")
def start_fresh() -> None:
    """Mark an empty data dir as a new instance, although the targets store older backups."""
    from llmcloud.instance import load_or_create_instance

    settings = settings_or_exit()
    instance = load_or_create_instance(settings.data_dir)
    typer.echo(f"data dir {settings.data_dir} is now instance {instance.id}")


@app.command("systemd-units")
def systemd_units(
    output: Path = typer.Option(Path("."), "--output", help="Folder to write the units into."),
) -> None:
    """Write llmcloud-backup.service and .timer, for backups run by systemd instead."""
    from llmcloud.backup.schedule import write_systemd_units

    settings: Settings = settings_or_exit()
    for path in write_systemd_units(settings, output):
        typer.echo(f"wrote {path}")
