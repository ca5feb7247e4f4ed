"""`llmcloud users`: accounts made from the command line, for servers where sign-up is closed."""

from __future__ import annotations

import sys

import typer
from sqlalchemy.exc import SQLAlchemyError

from llmcloud.auth.accounts import create_account
from llmcloud.auth.errors import ServiceError
from llmcloud.cli.common import fail, settings_or_exit
from llmcloud.db import database_url_from_settings, open_database
from llmcloud.settings import ConfigError

app = typer.Typer(help="Accounts: create one from the command line.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="users")


@app.command("create")
def create(
    username: str = typer.Argument(..., help="Name to log in with."),
    role: str = typer.Option("user", help="Role of the account: user, admin or pending."),
    email: str | None = typer.Option(None, help="E-mail address of the account, if any."),
    password_stdin: bool = typer.Option(
        False,
        "--password-stdin",
        help="Read the password from the first line of standard input instead of asking.",
    ),
) -> None:
    """Create an account with a password, in any signup_mode."""
    settings = settings_or_exit()
    password = _read_password(password_stdin)
    try:
        database = open_database(database_url_from_settings(settings))
    except ConfigError as exc:
        fail(str(exc), code=2)
    try:
        user = create_account(database, username, password, role=role, email=email)
    except ServiceError as exc:
        fail(exc.message, code=2)
    except SQLAlchemyError as exc:
        fail(
            f"cannot write the account to {database.safe_url} ({type(exc).__name__}). If this "
            "is a new data dir, start llmcloud up or llmcloud web once so that the database "
            "gets its tables, then run this again"
        )
    finally:
        database.dispose()
    typer.echo(f"Created account {user.username} (id {user.id}) with role {user.role.value}.")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("standard input has no password on its first line", code=2)
        return password
    typed: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return typed
